"""One rank of a distributed run: ``python -m torch.distributed.run ... -m trainer.worker CONFIG [--resume]``.

Started by :mod:`trainer.launch`, never by hand. A stop signal (forwarded by torchrun) ends the run with
a checkpoint and exit code 0, so torchrun does not report it as a failure; an error exits 1 so torchrun
stops the other ranks at once. What happened is in events.jsonl either way.
"""

from __future__ import annotations

import sys

from haruhi_tui.core.errors import Cancelled, HaruhiError

from . import train_config as tc
from .train_loop import run_training


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    resume = "--resume" in args
    paths = [a for a in args if a != "--resume"]
    if len(paths) != 1:
        print("usage: python -m trainer.worker CONFIG.toml [--resume]", file=sys.stderr)
        return 2
    try:
        config = tc.resolve(tc.load_toml(paths[0]))
        run_training(config, resume=resume)
    except Cancelled as exc:
        print(f"cancelled: {exc}", file=sys.stderr)
        return 0
    except HaruhiError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
