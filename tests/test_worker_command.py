"""The cl-worker argv, pinned to the original's build_command."""

from __future__ import annotations

from codalab_scaler.core.worker_command import (
    build_command,
    resolve_hostname,
    work_dir_for,
)
from tests.defaults import worker_options


def test_minimal_argv_matches_the_original() -> None:
    options = worker_options(
        server="https://cl.example", download_dependencies_max_retries=None,
        shared_memory_size_gb=None,
    )  # fmt: skip
    assert build_command(options, "abc", "/w/abc") == [
        "cl-worker", "--server", "https://cl.example", "--verbose", "--exit-when-idle",
        "--idle-seconds", "600", "--work-dir", "/w/abc", "--id", "$(hostname -s)-abc",
        "--network-prefix", "cl_worker_abc_network",
    ]  # fmt: skip


def test_defaults_add_the_original_default_worker_flags() -> None:
    argv = build_command(worker_options(), "id1", "/tmp/x")
    assert argv[-4:] == [
        "--download-dependencies-max-retries", "3", "--shared-memory-size-gb", "1",
    ]  # fmt: skip


def test_every_flag_in_the_original_order() -> None:
    options = worker_options(
        server="https://s", executable="/opt/cl-worker", idle_seconds=30, tag="gpu",
        tag_exclusive=True, group="nlp", exit_after_num_runs=8,
        download_dependencies_max_retries=5, max_work_dir_size="88g",
        delete_work_dir_on_exit=True, exit_on_exception=True, pass_down_termination=True,
        checkin_frequency_seconds=30, shared_memory_size_gb=10, preemptible=True,
    )  # fmt: skip
    assert build_command(options, "w1", "/scratch/w1") == [
        "/opt/cl-worker", "--server", "https://s", "--verbose", "--exit-when-idle",
        "--idle-seconds", "30", "--work-dir", "/scratch/w1", "--id", "$(hostname -s)-w1",
        "--network-prefix", "cl_worker_w1_network",
        "--tag", "gpu", "--group", "nlp", "--exit-after-num-runs", "8",
        "--download-dependencies-max-retries", "5", "--max-work-dir-size", "88g",
        "--delete-work-dir-on-exit", "--exit-on-exception", "--tag-exclusive",
        "--pass-down-termination", "--checkin-frequency-seconds", "30",
        "--shared-memory-size-gb", "10", "--preemptible",
    ]  # fmt: skip


def test_non_positive_exit_after_num_runs_is_left_out() -> None:
    for runs in (0, -1):
        assert "--exit-after-num-runs" not in build_command(
            worker_options(exit_after_num_runs=runs), "w", "/w"
        )


def test_tag_exclusive_without_tag_still_passes_the_flag_like_the_original() -> None:
    argv = build_command(worker_options(tag_exclusive=True), "w", "/w")
    assert "--tag-exclusive" in argv
    assert "--tag" not in argv


def test_work_dir_is_unique_per_worker_under_the_prefix() -> None:
    options = worker_options(work_dir_prefix="/data/cl")
    assert work_dir_for(options, "a") == "/data/cl/cl_worker_a_work_dir"
    assert work_dir_for(options, "b") != work_dir_for(options, "a")
    assert work_dir_for(worker_options(), "a") == "/tmp/cl_worker_a_work_dir"
    assert work_dir_for(worker_options(), "a", "/state/work") == "/state/work/cl_worker_a_work_dir"


def test_resolve_hostname_substitutes_the_shell_expression() -> None:
    argv = build_command(worker_options(), "w9", "/w")
    resolved = resolve_hostname(argv, "node7")
    assert resolved[resolved.index("--id") + 1] == "node7-w9"
    assert not any("$(" in arg for arg in resolved)
