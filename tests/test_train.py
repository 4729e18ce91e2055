"""Training on real photos: overfitting, resuming, bundles and configs."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import COCO, PHOTOS, TINY, needs_coco
from safetensors.torch import load_file, save_file

from captioner import Captioner
from captioner.config import TrainConfig, make_config
from captioner.core.errors import BundleError, ConfigError, TrainingError
from captioner.core.progress import Event, StopTraining
from captioner.storage.bundle import load_bundle
from captioner.training import trainer
from captioner.training.trainer import train


@pytest.fixture(scope="module")
def overfit_model(captions_csv, tmp_path_factory):
    cfg = TrainConfig(dataset_path=captions_csv, learning_rate=1e-2, epochs=60, **TINY)
    return train(cfg, tmp_path_factory.mktemp("overfit"))


def test_overfit_reproduces_training_captions(overfit_model, photo_dir):
    names = sorted(PHOTOS)
    captions = Captioner.load(overfit_model).caption([photo_dir / f"{n}.jpg" for n in names])
    assert captions == [PHOTOS[n] for n in names]


def test_bundle_contents_and_round_trip(overfit_model, photo_dir):
    files = sorted(p.name for p in overfit_model.iterdir())
    assert files == ["README.md", "config.json", "metrics.json", "model.safetensors", "vocab.json"]
    metrics = json.loads((overfit_model / "metrics.json").read_text())
    assert metrics["dev"]["CIDEr"] > 1.0 and metrics["best_epoch"] >= 1
    assert len(metrics["history"]) == 60
    card = (overfit_model / "README.md").read_text()
    assert "efficientnet_lite0" in card and "CIDEr" in card
    a = load_bundle(overfit_model)
    b = load_bundle(overfit_model)
    for (k, v), (_, w) in zip(
        a.model.state_dict().items(), b.model.state_dict().items(), strict=True
    ):
        assert torch.equal(v, w), k
    # PIL images and paths give the same, deterministic captions.
    from PIL import Image

    cap = Captioner.load(overfit_model)
    path = photo_dir / "coffee.jpg"
    assert cap.caption(path) == cap.caption([Image.open(path)]) == cap.caption(str(path))


def test_broken_bundles_are_refused_with_reasons(overfit_model, tmp_path):
    def copy() -> object:
        d = tmp_path / f"m{len(list(tmp_path.iterdir()))}"
        shutil.copytree(overfit_model, d)
        return d

    d = copy()
    (d / "vocab.json").write_text(
        json.dumps({"words": ["<pad>", "<start>", "<end>", "<unk>", "x"]})
    )
    with pytest.raises(BundleError, match="different models"):
        load_bundle(d)
    d = copy()
    (d / "model.safetensors").unlink()
    with pytest.raises(BundleError, match="model.safetensors is missing"):
        load_bundle(d)
    d = copy()
    (d / "model.safetensors").write_bytes(b"\x80\x04not a safetensors file")
    with pytest.raises(BundleError, match="unreadable weights"):
        load_bundle(d)
    d = copy()
    state = load_file(d / "model.safetensors")
    state["out.weight"] = state["out.weight"][:, :5].contiguous()
    save_file(state, d / "model.safetensors")
    with pytest.raises(BundleError, match="out.weight: shape"):
        load_bundle(d)
    d = copy()
    cfg = json.loads((d / "config.json").read_text())
    cfg["format_version"] = 99
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(BundleError, match="format version 99.*Upgrade"):
        load_bundle(d)
    with pytest.raises(BundleError, match="not found"):
        load_bundle(tmp_path / "nope")


def test_resume_after_interruption_matches_uninterrupted_run(captions_csv, tmp_path):
    cfg = TrainConfig(
        dataset_path=captions_csv, learning_rate=5e-3, epochs=4, average_epochs=3, **TINY
    )
    whole = train(cfg, tmp_path / "whole")

    # Stop after two epochs as a crash would, then run the same command again.
    def stop_after_two(event: Event) -> None:
        if event.phase == "epoch" and event.done == 2:
            raise StopTraining

    with pytest.raises(StopTraining):
        train(cfg, tmp_path / "resumed", report=stop_after_two)
    assert not (tmp_path / "resumed" / "model").exists()
    state = json.loads((tmp_path / "resumed" / "checkpoint" / "state.json").read_text())
    assert state["epoch"] == 2
    # A kill after epoch 3's log line but before its checkpoint leaves a line to be redone.
    with (tmp_path / "resumed" / "metrics.jsonl").open("a") as fh:
        fh.write(json.dumps({"epoch": 3, "loss": 9.9}) + "\n")
    events: list[Event] = []
    resumed = train(cfg, tmp_path / "resumed", report=events.append)
    # Before training on, the resumed run reports the checkpoint's history (not the log's
    # extra line): a reporter keeping its own copy takes that record.
    resume = next(i for i, e in enumerate(events) if e.phase == "resume")
    assert resume < next(i for i, e in enumerate(events) if e.phase == "train")
    assert events[resume].done == 2 and events[resume].metrics["history"] == state["history"]
    a, b = load_file(whole / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    log_a = (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()
    log_b = (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    strip = [{k: v for k, v in json.loads(x).items() if k != "seconds"} for x in log_a]
    assert strip == [{k: v for k, v in json.loads(x).items() if k != "seconds"} for x in log_b]
    # A different recipe in the same folder is refused rather than silently mixed.
    other = cfg.model_copy(update={"hidden_size": 64})
    with pytest.raises(TrainingError, match="different settings"):
        train(other, tmp_path / "resumed")


def test_mean_of_the_last_epochs_is_averaged_scored_and_kept_when_better(
    captions_csv, tmp_path, monkeypatch
):
    cfg = TrainConfig(
        dataset_path=captions_csv, learning_rate=5e-3, epochs=3, average_epochs=2, **TINY
    )
    run, ckpt = tmp_path / "run", tmp_path / "run" / "checkpoint" / "state.safetensors"
    # The tiny model's scores are arbitrary; lift the mean's CIDEr-D so that the branch that
    # keeps it is the one exercised (the real scores are still computed and logged).
    lift = {"on": False}
    real = trainer.dev_scores

    def scores(*args, **kwargs):
        got = real(*args, **kwargs)
        if lift["on"]:
            lift["on"] = False
            got = {**got, "CIDEr": got["CIDEr"] + 100.0}
        return got

    monkeypatch.setattr(trainer, "dev_scores", scores)

    def stop_after(n: int):
        def report(event: Event) -> None:
            if event.phase == "dev" and (event.message or "").startswith("scoring the mean"):
                lift["on"] = True
            if event.phase == "epoch" and event.done == n:
                raise StopTraining

        return report

    # Stop after epochs 2 and 3 (the window), so each epoch's weights can be read back; the
    # running mean must survive the stop in between.
    weights = {}
    for n in (2, 3):
        with pytest.raises(StopTraining):
            train(cfg, run, report=stop_after(n))
        tensors = load_file(ckpt)
        weights[n] = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    mean = {k[8:]: v for k, v in tensors.items() if k.startswith("average.")}
    assert mean.keys() == weights[3].keys()
    for k, v in mean.items():
        torch.testing.assert_close(v, (weights[2][k] + weights[3][k]) / 2)
    bundle = train(cfg, run)  # finishes without training again

    log = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [("mean_dev_CIDEr" in line) for line in log] == [False, False, True]
    assert log[-1]["mean_dev_CIDEr"] >= 100.0
    metrics = json.loads((bundle / "metrics.json").read_text())
    assert (metrics["best_epoch"], metrics["averaged_epochs"]) == (3, 2)
    assert "the mean of epochs 2-3's weights" in (bundle / "README.md").read_text()
    saved = load_file(bundle / "model.safetensors")
    for k, v in mean.items():
        torch.testing.assert_close(saved[k], v.to(saved[k].dtype))
    assert any(not torch.equal(saved[k], weights[3][k].to(saved[k].dtype)) for k in mean)
    with pytest.raises(ValueError, match="cannot exceed epochs"):
        TrainConfig(dataset_path=captions_csv, epochs=2, average_epochs=3)


def test_config_from_file_flags_and_errors(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('dataset_path = "data/c.csv"\ndataset_format = "captions"\nepochs = 3\n')
    cfg = make_config(toml, epochs=5, batch_size=None)
    assert (cfg.epochs, cfg.batch_size, cfg.dataset_format) == (5, 64, "captions")
    yml = tmp_path / "run.yaml"
    yml.write_text("dataset_path: d\nlearning_rate: -1\nencoder: vgg\n")
    with pytest.raises(ConfigError) as err:
        make_config(yml)
    assert "learning_rate" in str(err.value) and "unknown encoder 'vgg'" in str(err.value)
    (tmp_path / "bad.toml").write_text("epochs = [")
    with pytest.raises(ConfigError, match="cannot parse"):
        make_config(tmp_path / "bad.toml")
    with pytest.raises(ConfigError, match="batch_typo"):
        make_config(None, dataset_path="d", batch_typo=3)


@needs_coco
@pytest.mark.slow
def test_seed_coco_preset_trains_on_coco_mini(tmp_path):
    cfg = make_config(
        preset="seed-coco", dataset_path=COCO, encoder="efficientnet_lite0", epochs=1, batch_size=64
    )
    assert (cfg.embed_size, cfg.hidden_size, cfg.vocab_threshold) == (400, 356, 8)
    assert cfg.dataset_format == "coco" and cfg.learning_rate == 0.001
    with pytest.raises(ConfigError, match="unknown preset"):
        make_config(preset="nope", dataset_path=COCO)
    bundle = train(cfg, tmp_path / "run")
    assert load_bundle(bundle).model.cfg.hidden_size == 356
    assert json.loads((bundle / "metrics.json").read_text())["dev"]["CIDEr"] >= 0


def test_finetuned_encoder_is_trained_saved_and_used(captions_csv, tmp_path, photo_dir):
    from captioner.vision.encoders import Encoder

    cfg = TrainConfig(
        dataset_path=captions_csv,
        learning_rate=5e-3,
        epochs=2,
        finetune_encoder=True,
        encoder_lr=1e-3,
        workers=0,
        **TINY,
    )
    cache = tmp_path / "cache"
    path = train(cfg.model_copy(update={"cache_dir": cache}), tmp_path / "ft")
    assert not list(cache.glob("*.npy")), "fine-tuning must not use cached features"
    tuned = load_file(path / "encoder.safetensors")
    base = Encoder("efficientnet_lite0", onnx=False).net_state()
    changed = {k for k in base if not torch.equal(base[k], tuned[k])}
    assert any(k.startswith("net._conv_head") for k in changed)  # the last stage learned
    assert not any(k.startswith("net._conv_stem") for k in changed)  # the rest stayed frozen
    cap = Captioner.load(path)
    assert cap.encoder.weights_id != Encoder("efficientnet_lite0").weights_id
    assert torch.equal(
        cap.encoder.graph.net.state_dict()["net._conv_head.weight"], tuned["net._conv_head.weight"]
    )
    assert len(cap.caption([photo_dir / "coffee.jpg"])) == 1


def test_training_that_diverges_stops_at_once_and_saves_nothing(captions_csv, tmp_path):
    cfg = TrainConfig(dataset_path=captions_csv, epochs=2, **TINY)
    # Refused by the settings today (weight_decay <= 1), but an older job or a bench script
    # can still hand it over: the trainer is the last line, and never saves NaN.
    wild = cfg.model_copy(update={"weight_decay": 1e308})
    with pytest.raises(TrainingError, match=r"diverged in epoch 1: the loss or the weights"):
        train(wild, tmp_path / "run")
    assert not (tmp_path / "run" / "model").exists()
    assert not (tmp_path / "run" / "checkpoint").exists()
    rare = cfg.model_copy(update={"vocab_threshold": 10_000})
    with pytest.raises(TrainingError, match="vocab_threshold = 10000 keeps no word"):
        train(rare, tmp_path / "rare")
