"""The slurm-batch batch script, checked as text (no Slurm needed)."""

from __future__ import annotations

import itertools
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest

from codalab_scaler.core.worker_command import build_command
from codalab_scaler.sources.backends.slurm import script
from codalab_scaler.sources.backends.slurm.settings import SlurmBatchBackendSettings
from tests.defaults import worker_options

FILES = script.JobFiles(Path("/scratch/w1"), "alice-codalab-slurm-worker-p-w1")
PASSWORD_FILE = Path("/scratch/.codalab-password-p")


def render(**settings: Any) -> str:
    s = SlurmBatchBackendSettings(partition="gpu", **settings)
    command = build_command(worker_options(server="https://cl.example"), "w1", "/work/w1")
    return script.render(s, FILES, script.worker_argv(command, PASSWORD_FILE))


def sbatch_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("#SBATCH")]


def test_default_settings_give_the_original_shape() -> None:
    assert sbatch_lines(render()) == [
        "#SBATCH --chdir=/scratch/w1",
        "#SBATCH --cpus-per-task=1",
        "#SBATCH --error=/scratch/w1/alice-codalab-slurm-worker-p-w1.err",
        "#SBATCH --gres=gpu:1",
        "#SBATCH --job-name=alice-codalab-slurm-worker-p-w1",
        "#SBATCH --mem=2048M",
        "#SBATCH --nodes=1",
        "#SBATCH --ntasks=1",
        "#SBATCH --open-mode=append",
        "#SBATCH --output=/scratch/w1/alice-codalab-slurm-worker-p-w1.out",
        "#SBATCH --partition=gpu",
        "#SBATCH --time=10-0",
    ]


OPTIONAL: dict[str, list[Any]] = {
    "gpus": [0, 1, 4],
    "gpu_type": [None, "a100"],
    "constraint": [None, "avx512&ib"],
    "nodelist": ["", "node[1-3]"],
    "exclude": ["", "node7,node9"],
    "account": [None, "nlp"],
}


@pytest.mark.parametrize(
    "combo",
    [dict(zip(OPTIONAL, values, strict=True)) for values in itertools.product(*OPTIONAL.values())],
    ids=lambda combo: "-".join(f"{k}={v}" for k, v in combo.items()),
)
def test_every_flag_combination(combo: dict[str, Any]) -> None:
    text = render(cpus=3, memory_mb=4096, time="2-12", **combo)
    lines = set(sbatch_lines(text))
    assert {"#SBATCH --cpus-per-task=3", "#SBATCH --mem=4096M", "#SBATCH --time=2-12"} <= lines
    gpus, gpu_type = combo["gpus"], combo["gpu_type"]
    gres = [line for line in lines if line.startswith("#SBATCH --gres=")]
    if gpus == 0:
        assert gres == []
        assert "nvidia-smi" not in text
        assert text.rstrip().endswith("--gpuset NONE")
    else:
        kind = f"gpu:{gpu_type}" if gpu_type else "gpu"
        assert gres == [f"#SBATCH --gres={kind}:{gpus}"]
        assert "nvidia-smi -L" in text
        assert text.rstrip().endswith('--gpuset "$GPUSET"')
    for key in ("constraint", "nodelist", "exclude", "account"):
        present = [line for line in lines if line.startswith(f"#SBATCH --{key}=")]
        assert present == ([f"#SBATCH --{key}={combo[key]}"] if combo[key] else [])
    assert len(lines) == len(sbatch_lines(text))  # no option twice
    assert sbatch_lines(text) == sorted(sbatch_lines(text))


def test_body_runs_the_seed_command_under_srun_with_the_originals_additions() -> None:
    text = render(gpus=0)
    exec_line = text.splitlines()[-1]
    assert exec_line.startswith("exec srun --unbuffered cl-worker --server https://cl.example ")
    assert '--id "$(hostname -s)"-w1' in exec_line
    words = shlex.split(exec_line.replace('"$(hostname -s)"', "HOST"))
    assert words[words.index("--id") + 1] == "HOST-w1"
    assert words[-5:] == [
        "--pass-down-termination", "--password-file", str(PASSWORD_FILE), "--gpuset", "NONE",
    ]  # fmt: skip
    assert words.count("--pass-down-termination") == 1


def test_pass_down_termination_is_not_repeated() -> None:
    command = build_command(worker_options(pass_down_termination=True), "w1", "/w")
    argv = script.worker_argv(command, PASSWORD_FILE)
    assert argv.count("--pass-down-termination") == 1


def test_arguments_are_quoted_so_bash_runs_them_literally(tmp_path: Path) -> None:
    command = ["/opt/cl worker", "--tag", "it's $(rm -rf /) `x`", "--id", "$(hostname -s)-w1"]
    line = " ".join(script.quote(word) for word in command)
    probe = tmp_path / "args.sh"
    probe.write_text(f"printf '%s\\n' {line}\n")
    out = subprocess.run(["bash", str(probe)], capture_output=True, text=True, check=True)
    host = subprocess.run(["hostname", "-s"], capture_output=True, text=True, check=True)
    assert out.stdout.splitlines() == [*command[:4], f"{host.stdout.strip()}-w1"]


def test_the_script_is_valid_bash(tmp_path: Path) -> None:
    for gpus in (0, 2):
        path = tmp_path / f"job{gpus}.slurm"
        path.write_text(render(gpus=gpus, gpu_type="v100", account="nlp"))
        subprocess.run(["bash", "-n", str(path)], check=True)


def test_the_script_names_the_password_file_and_holds_no_password() -> None:
    text = render()
    assert f"--password-file {PASSWORD_FILE}" in text
    assert "CODALAB_PASSWORD" not in text
    assert "CODALAB_USERNAME" not in text
