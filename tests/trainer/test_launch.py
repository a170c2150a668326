"""The torchrun command of ``haruhi train --gpus N`` carries only options the torchrun that runs it has:
the GPU machines have torch 2.11, whose torchrun refuses options that CI's torch 2.13 knows."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainer.launch import SHUTDOWN_SECONDS, launch_command, torchrun_options

#: Every option of torch 2.11.0's torchrun (``get_args_parser`` in torch/distributed/run.py of the 2.11.0
#: wheel): no ``--shutdown-timeout``.
TORCH_2_11_TORCHRUN_OPTIONS = frozenset({
    "-h", "--help",
    "--nnodes", "--nproc-per-node", "--nproc_per_node",
    "--rdzv-backend", "--rdzv_backend", "--rdzv-endpoint", "--rdzv_endpoint", "--rdzv-id", "--rdzv_id",
    "--rdzv-conf", "--rdzv_conf", "--standalone",
    "--max-restarts", "--max_restarts", "--monitor-interval", "--monitor_interval",
    "--start-method", "--start_method", "--event-log-handler", "--event_log_handler", "--role",
    "-m", "--module", "--no-python", "--no_python", "--run-path", "--run_path", "--log-dir", "--log_dir",
    "-r", "--redirects", "-t", "--tee", "--local-ranks-filter", "--local_ranks_filter",
    "--node-rank", "--node_rank", "--master-addr", "--master_addr", "--master-port", "--master_port",
    "--local-addr", "--local_addr", "--logs-specs", "--logs_specs", "--numa-binding", "--numa_binding",
    "--signals-to-handle", "--signals_to_handle", "--duplicate-stdout-filters", "--duplicate_stdout_filters",
    "--duplicate-stderr-filters", "--duplicate_stderr_filters", "--virtual-local-rank", "--virtual_local_rank",
})

CASES = [dict(nnodes=1, node_rank=0, resume=False), dict(nnodes=2, node_rank=1, resume=True)]


def _command(config: Path, case: dict, runner_options=None) -> list[str]:
    return launch_command(config, nproc=2, master_addr="10.0.0.1", master_port=29511, runner_options=runner_options,
                          **case)


def _runner_arguments(cmd: list[str]) -> list[str]:
    """What torchrun parses itself: after ``-m torch.distributed.run``, up to the worker module."""
    start = cmd.index("torch.distributed.run") + 1
    return cmd[start:cmd.index("trainer.worker") - 1]


@pytest.mark.parametrize("case", CASES)
def test_torch_2_11_torchrun_gets_only_its_own_options(tmp_path, case):
    cmd = _command(tmp_path / "train_config.toml", case, TORCH_2_11_TORCHRUN_OPTIONS)
    options = {arg.split("=", 1)[0] for arg in _runner_arguments(cmd)}
    assert options <= TORCH_2_11_TORCHRUN_OPTIONS, options - TORCH_2_11_TORCHRUN_OPTIONS
    assert "--nproc-per-node" in options and ("--standalone" in options) == (case["nnodes"] == 1)


@pytest.mark.parametrize("case", CASES)
def test_the_installed_torchrun_parses_the_command(tmp_path, case):
    from torch.distributed.run import get_args_parser

    config = tmp_path / "train_config.toml"
    args = get_args_parser().parse_args(_command(config, case)[3:])
    assert args.nproc_per_node == "2" and args.module and args.training_script == "trainer.worker"
    assert args.training_script_args == [str(config)] + (["--resume"] if case["resume"] else [])
    if case["nnodes"] == 1:
        assert args.standalone
    else:
        assert (args.nnodes, args.node_rank, args.master_addr, args.master_port) == ("2", 1, "10.0.0.1", 29511)
    if "--shutdown-timeout" in torchrun_options():  # torch 2.13: workers get time to save on a stop signal
        assert int(args.shutdown_timeout) == SHUTDOWN_SECONDS
