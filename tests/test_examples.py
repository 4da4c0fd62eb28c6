"""The Kubernetes and SLURM examples start workers exactly as this test does: their command line and
environment are read from the example files and run against the CI PostgreSQL server, and the
password is never on a command line nor in any output."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import optuna
from conftest import write_study

from autopeft.storage.backends import open_storage
from autopeft.storage.results import FINISHED

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _kubernetes_worker() -> tuple[list[str], set[str]]:
    """The Job's container command and the environment variables it sets, read from the manifest."""
    text = (EXAMPLES / "kubernetes" / "workers.yaml").read_text()
    command = re.search(r"command: \[(.*)\]", text)
    assert command is not None
    argv = [part.strip().strip('"') for part in command.group(1).split(",")]
    names = set(re.findall(r"- name: ([A-Z_]+)\n", text))
    assert "secretKeyRef" in text and "AUTOPEFT_STORAGE" in names
    return argv, names


def _worker(argv: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    # `autopeft` as the manifest's container runs it, from this interpreter's environment.
    return subprocess.Popen(
        [sys.executable, "-m", "autopeft", *argv[1:]],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_workers_started_as_the_examples_start_them_share_one_study(tmp_path, postgres_url, minilm_available) -> None:
    name = f"examples-{uuid.uuid4().hex[:8]}"
    study = write_study(
        tmp_path,
        study={"name": name, "n_trials": 4, "heartbeat_seconds": 2},
        search={"methods": ["bitfit", "lora"]},
        data={"max_train_examples": 32, "max_eval_examples": 16},
    )
    argv, names = _kubernetes_worker()
    (tmp_path / "study").mkdir()
    (tmp_path / "study" / "study.toml").write_text(
        study.read_text().replace('= "train', '= "../train').replace('= "validation', '= "../validation')
    )
    base = {k: v for k, v in os.environ.items() if k not in ("AUTOPEFT_STORAGE", "PGPASSWORD")}
    kubernetes = {**base, "AUTOPEFT_STORAGE": postgres_url, "HF_HUB_OFFLINE": "1", "POD_NAME": "autopeft-workers-x1"}
    assert names <= set(kubernetes)
    assert not [a for a in argv if "://" in a]  # the URL is never on the command line
    k8s_argv = [
        a.replace("/study/study.toml", str(tmp_path / "study" / "study.toml")).replace(
            "$(POD_NAME)", kubernetes["POD_NAME"]
        )
        for a in argv
    ]

    # SLURM: the batch script itself, with the URL in a file only its owner reads, as it documents.
    secret = tmp_path / "storage-url"
    secret.write_text(postgres_url)
    secret.chmod(0o600)
    slurm_env = {**base, "AUTOPEFT_STORAGE_FILE": str(secret), "SLURM_ARRAY_JOB_ID": "7", "SLURM_ARRAY_TASK_ID": "2"}
    slurm_env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    workers = [
        _worker(k8s_argv, kubernetes),
        subprocess.Popen(
            ["bash", str(EXAMPLES / "slurm" / "workers.sbatch"), str(tmp_path / "study" / "study.toml")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=slurm_env,
        ),
    ]
    outputs = [w.communicate(timeout=600) for w in workers]
    assert [w.returncode for w in workers] == [0, 0], [err[-2000:] for _, err in outputs]
    password = re.search(r"://[^:/@]*:([^@]+)@", postgres_url)
    for out, err in outputs:
        assert "worker done" in out
        if password:
            assert password.group(1) not in out + err
    stored = optuna.load_study(study_name=name, storage=open_storage(postgres_url, 30))
    finished = [t for t in stored.trials if t.state in FINISHED]
    assert len(finished) == 4
    labels = {str(t.user_attrs.get("worker", "")) for t in finished}
    assert labels, "every trial records its worker"
    assert not (tmp_path / "study" / f"{name}.db").exists()  # nothing went to a default SQLite file
