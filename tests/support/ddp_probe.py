"""One rank of a CPU data-parallel run (torchrun, gloo) through ``run_training``, recording what DDP does.

    python -m torch.distributed.run --nproc-per-node=2 --standalone tests/support/ddp_probe.py CONFIG.toml OUT

The engine is the real transformers + PEFT one; the probe only watches: a forward pre-hook on the model sees
each micro-batch inside DDP's forward (whether DDP will synchronise its gradients, and the DDP settings), and a
communication hook on that DDP module counts the gradient all-reduces and which micro-batch each belongs to.
Each rank writes OUT/probe-rank<R>.json.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def main(config_path: str, out: str) -> None:
    import torch.distributed as dist
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
    from torch.nn.parallel import DistributedDataParallel

    from trainer import train_config as tc
    from trainer.engines import HFEngine
    from trainer.train_loop import run_training

    record = {"micro_batches": [], "all_reduces": [], "ddp": None}

    def counting_hook(state, bucket):
        record["all_reduces"].append(len(record["micro_batches"]))  # the micro-batch whose backward ran it
        return allreduce_hook(None, bucket)

    def before_forward(module, args, kwargs):
        ddp = DistributedDataParallel._get_active_ddp_module()
        if ddp is None or not module.training:
            return None
        if record["ddp"] is None:
            ddp.register_comm_hook(None, counting_hook)
            record["ddp"] = {"gradient_as_bucket_view": ddp.gradient_as_bucket_view,
                             "find_unused_parameters": ddp.find_unused_parameters}
        record["micro_batches"].append({"syncs": bool(ddp.require_backward_grad_sync)})
        return None

    class WatchedEngine(HFEngine):
        def load(self, config, base_dir, placement):
            loaded = super().load(config, base_dir, placement)
            loaded.model.register_forward_pre_hook(before_forward, with_kwargs=True)
            return loaded

    run_training(tc.resolve(tc.load_toml(config_path)), engine=WatchedEngine())
    rank = dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", 0))
    Path(out, f"probe-rank{rank}.json").write_text(json.dumps(record), encoding="utf-8")


if __name__ == "__main__":
    main(*sys.argv[1:3])
