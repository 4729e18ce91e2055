"""The package's shape holds: imports go one way, the config and --help never load torch, one
decoding rule everywhere, consistent commands with one-line errors, and a learning-rate
schedule whose step count is the epoch's real number of batches."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PHOTOS

from captioner.config import DecodeConfig, TrainConfig
from captioner.core.errors import ConfigError
from captioner.training.batches import count_batches, epoch_batches

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "captioner"
# Stages from lowest to highest; a module may import its own stage and lower ones only.
STAGES = [
    "core",
    "data",
    "vision",
    "decoders",
    "config",
    "storage",
    "api",
    "evaluation",
    "training",
    "serving",
    "cli",
]


def stage_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "captioner" or len(parts) < 2:
        return None
    return parts[1] if parts[1] in STAGES else None


def imports_of(path: Path) -> set[str]:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    package = list(rel.parts[:-1])  # relative imports resolve against the module's package
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            mod = ".".join([*base, node.module] if node.module else base)
            found.add(mod)
            found.update(f"{mod}.{a.name}" for a in node.names)  # `from . import x`
    return found


def test_imports_go_one_way():
    problems = []
    for path in PACKAGE.rglob("*.py"):
        own = stage_of("captioner." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts))
        if own is None:
            continue
        for mod in imports_of(path):
            other = stage_of(mod)
            if other and STAGES.index(other) > STAGES.index(own):
                problems.append(f"{path.relative_to(PACKAGE)} ({own}) imports {mod} ({other})")
    assert not problems, "\n".join(problems)


def test_config_and_help_do_not_import_torch():
    code = (
        "import sys, contextlib, io\n"
        "import captioner, captioner.config, captioner.cli\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "    captioner.cli.main(['train', '--help'])\n"
        "captioner.config.TrainConfig(dataset_path='d')\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_one_decoding_rule():
    base = DecodeConfig()
    assert TrainConfig(dataset_path="d").decode == base  # training's defaults are the same
    assert base.resolve(beam_size=None, length_penalty=None) == base
    assert base.resolve(beam_size=5).beam_size == 5
    limit = DecodeConfig.model_fields["beam_size"].metadata[-1].le
    with pytest.raises(ConfigError, match="beam_size"):
        base.resolve(beam_size=limit + 1)
    # A bundle's saved block is read with the same defaults (older bundles lack fields).
    assert DecodeConfig.from_saved({"beam_size": 2}).length_penalty == base.length_penalty


# A checkpoint's fingerprint as written before decoding settings were nested in `decode`
# (the default preset on a captions file): such runs must still resume.
OLD_FINGERPRINT = {
    "dataset_format": "captions", "dataset_path": "/tmp/bl/small.csv", "images": None,
    "train_split": "train", "dev_split": "dev", "skip_missing": False,
    "encoder": "efficientnet_lite0", "finetune_encoder": False, "encoder_lr": 0.0001,
    "decoder": "attention", "class_evidence": True, "batch_size": 64, "vocab_threshold": 2,
    "embed_size": 256, "hidden_size": 512, "learning_rate": 0.001, "num_layers": 1,
    "dropout": 0.3, "grad_clip": 5.0, "label_smoothing": 0.1, "weight_decay": 0.0,
    "lr_schedule": "cosine", "average_epochs": 2, "max_len": 20, "seed": 42,
}  # fmt: skip


def test_flat_settings_old_bundles_and_old_checkpoints_still_load(tmp_path):
    from captioner.config import make_config

    saved = json.loads((PACKAGE / "models" / "default" / "config.json").read_text())
    cfg = TrainConfig(**saved["train"])  # written flat, before `decode` existed
    assert cfg.decode == DecodeConfig.from_saved(saved["decoding"])
    assert cfg.decode.beam_size == 5 and cfg.decode.rerank_neighbours == 15
    # The fingerprint leaves decoding out as a whole; older checkpoints' fingerprints match.
    flat = {**OLD_FINGERPRINT, "epochs": 3, "beam_size": 5, "rerank_neighbours": 15}
    flat |= {"class_guidance": 1.0, "repetition_penalty": 2.0, "rerank_precision": 0.4}
    assert TrainConfig(**flat).fingerprint() == OLD_FINGERPRINT
    assert TrainConfig(**{**flat, "beam_size": 3}).fingerprint() == OLD_FINGERPRINT
    # Layers merge field by field: a flag changes one decoding setting, the preset keeps the rest.
    cfg = make_config(preset="default", dataset_path="d", beam_size=3)
    assert (cfg.decode.beam_size, cfg.decode.repetition_penalty) == (3, 2.0)
    file = tmp_path / "run.toml"
    file.write_text('dataset_path = "d"\nmax_len = 16\n[decode]\nbeam_size = 2\n')
    cfg = make_config(file, preset="default")
    assert (cfg.decode.beam_size, cfg.decode.max_len, cfg.max_len) == (2, 16, 16)
    assert cfg.decode.rerank_neighbours == 15
    with pytest.raises(ConfigError, match="decode"):
        file.write_text('dataset_path = "d"\ndecode = 5\n')
        make_config(file)


def test_bundled_model_api_and_http_use_the_models_own_decoding(photo_dir, tmp_path):
    from fastapi.testclient import TestClient

    from captioner import Captioner
    from captioner.serving.server import ServerSettings, create_app

    cap = Captioner.load()
    assert cap.decoding == DecodeConfig(
        beam_size=5,
        max_len=20,
        length_penalty=1.0,
        repetition_penalty=2.0,
        class_guidance=1.0,
        rerank_neighbours=15,
        rerank_weight=0.5,
        rerank_precision=0.4,
        neighbour_guidance=1.0,
        open_vocabulary=True,
        class_constraint=0.3,
        tag_agreement=True,
    )
    names = sorted(PHOTOS)
    paths = [photo_dir / f"{n}.jpg" for n in names]
    default = cap.caption(paths)
    assert default == cap.caption(paths, decode=cap.decoding)
    files = [("files", (p.name, p.read_bytes(), "image/jpeg")) for p in paths]
    with TestClient(
        create_app(ServerSettings(state_dir=tmp_path / "state")), base_url="http://127.0.0.1"
    ) as client:
        got = client.post("/api/captions", files=files).json()
        assert [r["caption"] for r in got] == default
        too_wide = client.post("/api/captions", files=files, data={"beam_size": "21"})
        assert too_wide.status_code == 422 and "beam_size" in too_wide.json()["detail"]


@pytest.mark.parametrize(
    "n,batch", [(1, 1), (7, 3), (3200, 64), (3201, 64), (30000, 64), (12345, 17)]
)
def test_schedule_step_count_is_the_epochs_batches(n, batch):
    caps = [(i, [1] * (2 + i % 13)) for i in range(n)]
    batches = epoch_batches(caps, batch, seed=3)
    assert count_batches(n, batch) == len(batches)
    assert sorted(i for b in batches for i in b) == list(range(n))  # every caption once


def captioner_cli(*args: str, env: dict | None = None, cwd: Path | None = None):
    return subprocess.run(
        [sys.executable, "-m", "captioner", *args],
        capture_output=True,
        text=True,
        env=env or {**os.environ},
        cwd=cwd,
        timeout=600,
    )


def test_commands_share_flag_names():
    for command in ("train", "evaluate", "features"):
        out = captioner_cli(command, "--help").stdout
        for flag in ("--dataset-format", "--dataset-path", "--images", "--skip-missing"):
            assert flag in out, f"{command} lacks {flag}"
    train_help = captioner_cli("train", "--help").stdout
    assert "PydanticUndefined" not in train_help and "(required)" in train_help


def one_line_error(res: subprocess.CompletedProcess, message: str) -> None:
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr and message in res.stderr, res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], res.stderr


def test_known_errors_are_one_line(captions_csv, photo_dir, tmp_path):
    data = ["--dataset-format", "captions", "--dataset-path", str(captions_csv)]
    one_line_error(captioner_cli("features", *data, "--encoder", "vgg"), "unknown encoder 'vgg'")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.jpg").write_bytes(b"not an image")
    shutil.copy(photo_dir / "coffee.jpg", bad / "coffee.jpg")
    csv_file = bad / "caps.csv"
    csv_file.write_text("image,caption\nbroken.jpg,a broken photo\ncoffee.jpg,a cup\n")
    one_line_error(
        captioner_cli(
            "features",
            "--dataset-format",
            "captions",
            "--dataset-path",
            str(csv_file),
            "--splits",
            "train",
            "--cache-dir",
            str(tmp_path / "c"),
        ),
        "broken.jpg: cannot read image",
    )
    # Java missing: only the venv's own programs on PATH.
    env = {**os.environ, "PATH": str(Path(sys.executable).parent)}
    one_line_error(captioner_cli("evaluate", *data, "--split", "dev", env=env), "needs Java")
    # A corrupt checkpoint names the file and what to do.
    run = tmp_path / "run"
    (run / "checkpoint").mkdir(parents=True)
    (run / "checkpoint" / "state.json").write_text("{not json")
    one_line_error(
        captioner_cli("train", *data, "--out", str(run), "--quiet"), "state.json is unreadable"
    )
    cfg = TrainConfig(dataset_path=captions_csv, dataset_format="captions")
    (run / "checkpoint" / "state.json").write_text(
        json.dumps(
            {
                "epoch": 1,
                "fingerprint": cfg.fingerprint(),
                "best": {},
                "history": [],
                "param_groups": [],
            }
        )
    )
    (run / "checkpoint" / "state.safetensors").write_bytes(b"\x00" * 10)
    one_line_error(
        captioner_cli("train", *data, "--out", str(run), "--quiet"), "cannot be restored"
    )
