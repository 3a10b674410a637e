"""``codalab-scaler simulate`` end to end: the table, the files, the plots, and exit 2 on bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from codalab_scaler.entry import simulate as simulate_entry
from codalab_scaler.entry.cli import main
from codalab_scaler.whatif.configs import DEFAULT_CONFIG, PoolModelSettings, SimulateSettings

SMALL = Path(__file__).parent.parent / "examples" / "workloads" / "small.csv"
EXECUTABLE = Path(sys.executable).parent / "codalab-scaler"
PNG = b"\x89PNG\r\n\x1a\n"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["simulate", *argv], environ={})
    out, err = capsys.readouterr()
    return code, out, err


def test_help_documents_every_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["simulate", "--help"], environ={})
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--workload", "--format", "--days", "--seed", "--config", "--policy", "--sweep",
                 "--out", "--no-plots"):  # fmt: skip
        assert flag in out


def test_table_and_files_from_the_shipped_trace(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out, err = run(capsys, "--workload", str(SMALL), "--policy", "compat,fast",
                         "--out", str(tmp_path))  # fmt: skip
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[2].split()[:3] == ["configuration", "mean", "wait"]
    assert [line.split()[0] for line in lines[3:5]] == ["compat", "fast"]
    summary = json.loads((tmp_path / "summary.json").read_text())
    names = [c["name"] for c in summary["configurations"]]
    assert names == ["compat", "fast"]
    compat, fast = summary["configurations"]
    assert compat["unroutable"] == fast["unroutable"] == 2  # the tpu bundle and the 64-cpu one
    assert fast["mean_wait_seconds"] < compat["mean_wait_seconds"]
    timeline = (tmp_path / "timeline.csv").read_text().splitlines()
    assert timeline[0] == "configuration,seconds,pool,staged,booting,serving,idle,stuck"
    assert {row.split(",")[2] for row in timeline[1:]} == {"cpu", "gpu"}
    for name in ("timeline-cpu.png", "timeline-gpu.png", "wait_cdf.png", "wait_vs_cost.png"):
        data = (tmp_path / name).read_bytes()
        assert data.startswith(PNG), name
        assert len(data) > 10_000, name  # axes, lines and labels, not an empty canvas


def test_same_seed_same_summary_byte_for_byte(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    outs = []
    for run_dir, seed in (("a", "3"), ("b", "3"), ("c", "4")):
        code, _out, _err = run(capsys, "--days", "1", "--seed", seed, "--policy", "compat,fast",
                               "--out", str(tmp_path / run_dir), "--no-plots")  # fmt: skip
        assert code == 0
        outs.append((tmp_path / run_dir / "summary.json").read_bytes())
    assert outs[0] == outs[1]
    assert outs[0] != outs[2]


def test_a_sweep_and_two_config_files(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    small = tmp_path / "small.toml"
    small.write_text('[pools.cpu]\nmin_workers = 0\nmax_workers = 2\npolicy = "fast"\n'
                     'backend = { kind = "local", cpus = 4, memory_mb = 16384 }\n')  # fmt: skip
    big = tmp_path / "big.toml"
    big.write_text(small.read_text().replace("max_workers = 2", "max_workers = 20"))
    code, out, err = run(capsys, "--workload", str(SMALL), "--config", str(small),
                         "--config", str(big), "--sweep", "worker_idle_seconds=60,1200",
                         "--out", str(tmp_path / "out"))  # fmt: skip
    assert (code, err) == (0, "")
    rows = json.loads((tmp_path / "out" / "summary.json").read_text())["configurations"]
    by_name = {r["name"]: r for r in rows}
    assert list(by_name) == [
        "small worker_idle_seconds=60", "small worker_idle_seconds=1200",
        "big worker_idle_seconds=60", "big worker_idle_seconds=1200",
    ]  # fmt: skip
    # fewer workers wait longer; workers that stay idle longer cost more
    assert (by_name["small worker_idle_seconds=60"]["mean_wait_seconds"]
            > by_name["big worker_idle_seconds=60"]["mean_wait_seconds"])  # fmt: skip
    assert (by_name["big worker_idle_seconds=1200"]["idle_worker_hours"]
            > by_name["big worker_idle_seconds=60"]["idle_worker_hours"])  # fmt: skip
    assert "small worker_idle_seconds=60" in out
    assert (tmp_path / "out" / "wait_vs_cost.png").read_bytes().startswith(PNG)


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--sweep", "max_workers"], "codalab-scaler: config error: --sweep: expected setting="),
        (["--sweep", "warp_speed=1,2"], "codalab-scaler: config error: --sweep: warp_speed: unknown"),
        (["--sweep", "pools.gpu.max_workers=-1,2"], "codalab-scaler: config error: pools.gpu.max_workers:"),
        (["--sweep", "simulate.pools.cpu.refuse_rate=2"], "codalab-scaler: config error: simulate.pools.cpu.refuse_rate:"),
        (["--policy", "compat,speedy"], "codalab-scaler: config error: --policy: speedy"),
        (["--workload", "/nonexistent/trace.csv"], "codalab-scaler: config error: --workload: cannot read /nonexistent/trace.csv"),
        (["--workload", "trace.txt"], "codalab-scaler: config error: --workload: trace.txt: say --format"),
        (["--config", "/nonexistent/a.toml"], "codalab-scaler: config error: config: cannot read /nonexistent/a.toml"),
        (["--days", "0"], "codalab-scaler: config error: --days: must be more than 0"),
    ],
)  # fmt: skip
def test_bad_input_exits_2_with_one_line(
    capsys: pytest.CaptureFixture[str], argv: list[str], says: str
) -> None:
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert out == ""
    assert len(err.splitlines()) == 1
    assert err.startswith(says)


def test_a_malformed_trace_line_exits_2_naming_the_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    trace = tmp_path / "t.csv"
    lines = SMALL.read_text().splitlines()
    lines[6] = "12,1,0,2g,ten,,u01"
    trace.write_text("\n".join(lines) + "\n")
    code, out, err = run(capsys, "--workload", str(trace))
    assert (code, out) == (2, "")
    assert (
        err
        == f"codalab-scaler: workload error: {trace}: line 7: run_seconds: not a number: 'ten'\n"
    )


def test_out_without_matplotlib_names_the_extra(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(simulate_entry, "plots_available", lambda: False)
    code, out, err = run(capsys, "--workload", str(SMALL), "--out", str(tmp_path / "o"))
    assert (code, out) == (2, "")
    assert "codalab-scaler[simulate]" in err
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()
    code, _out, _err = run(capsys, "--workload", str(SMALL), "--out", str(tmp_path / "o"),
                           "--no-plots")  # fmt: skip
    assert code == 0
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["summary.json", "timeline.csv"]


@pytest.mark.process
def test_the_installed_command_exits_2_on_a_bad_sweep() -> None:
    done = subprocess.run([str(EXECUTABLE), "simulate", "--sweep", "nonsense"],
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1
    assert "--sweep" in done.stderr


def test_global_flags_apply_to_every_configuration(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code = main(["--max-workers", "3", "--sleep-time", "10", "simulate", "--workload", str(SMALL),
                 "--out", str(tmp_path / "flags"), "--no-plots"], environ={})  # fmt: skip
    assert code == 0
    code, _out, _err = run(capsys, "--workload", str(SMALL), "--sweep", "max_workers=3",
                           "--config", str(_with_sleep(tmp_path, 10)),
                           "--out", str(tmp_path / "sweep"), "--no-plots")  # fmt: skip
    assert code == 0
    flags = json.loads((tmp_path / "flags" / "summary.json").read_text())["configurations"][0]
    sweep = json.loads((tmp_path / "sweep" / "summary.json").read_text())["configurations"][0]
    assert flags.pop("name") == "default"
    assert sweep.pop("name") == "max_workers=3"
    assert sweep.pop("sweep_value") == 3
    flags.pop("sweep_value")
    assert flags == sweep


def _with_sleep(tmp_path: Path, seconds: int) -> Path:
    """The default configuration with another sleep_time, as a file."""
    path = tmp_path / "sleep.toml"
    path.write_text(DEFAULT_CONFIG.replace("sleep_time = 5", f"sleep_time = {seconds}"))
    return path


def test_a_production_file_needs_no_credentials(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = tmp_path / "prod.toml"
    config.write_text('password_file = "/nonexistent/codalab-password"\n'
                      '[pools.cpu]\nbackend = { kind = "local", cpus = 4, memory_mb = 16384 }\n')  # fmt: skip
    code, out, err = run(capsys, "--workload", str(SMALL), "--config", str(config))
    assert (code, err) == (0, "")
    assert "prod" in out


def test_help_lists_every_simulate_setting_with_its_default(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        main(["simulate", "--help"], environ={})
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.strip()}
    models = [(n, f) for n, f in SimulateSettings.model_fields.items() if n != "pools"]
    models += list(PoolModelSettings.model_fields.items())
    for name, field in models:
        default = "unset" if field.default is None else f"({field.default:g})"
        assert default in lines[name], name


@pytest.mark.process
def test_same_seed_same_bytes_across_processes(tmp_path: Path) -> None:
    """Nothing depends on the process: two runs with different hash seeds write the same summary."""
    summaries = []
    for hash_seed in ("1", "2"):
        out = tmp_path / hash_seed
        done = subprocess.run(
            [str(EXECUTABLE), "simulate", "--days", "1", "--policy", "compat,fast",
             "--out", str(out), "--no-plots"],
            capture_output=True, text=True, timeout=120, check=False,
            env={"PATH": "/usr/bin:/bin", "PYTHONHASHSEED": hash_seed},
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        summaries.append((out / "summary.json").read_bytes())
        assert (out / "timeline.csv").stat().st_size > 0
    assert summaries[0] == summaries[1]


def test_the_docs_show_what_the_command_prints(capsys: pytest.CaptureFixture[str]) -> None:
    docs = (Path(__file__).parent.parent / "docs" / "simulate.md").read_text()
    code, out, _err = run(capsys, "--workload", str(SMALL), "--policy", "compat,fast")
    assert code == 0
    assert out.strip() in docs
    code, out, _err = run(capsys, "--workload", str(SMALL), "--policy", "fast",
                          "--sweep", "max_workers=2,5,20")  # fmt: skip
    assert code == 0
    table = out.split("\n\n", 1)[1].strip()
    assert table in docs
