"""The CLI round trip on small demo data: fit -> test -> predict -> validate, and DDP equality."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from medfusion.cli import find_samples, main
from medfusion.data.state import find_data_state
from medfusion.models import DivergedError
from medfusion.runs.checkpoints import CHECKPOINT_FORMAT, CheckpointError, tokenizer_from_state

CONFIGS = Path(__file__).parents[1] / "configs"
pytestmark = pytest.mark.slow


def small_run_args(root: Path) -> list[str]:
    """Overrides that make the demo configs run in seconds: 150 samples at 32 px, a tiny CNN."""
    return [
        f"--data.root={root / 'data'}",
        "--data.num_samples=150",  # gives 21 validation samples: odd, so DDP padding would show
        "--data.demo_image_size=32",
        "--data.image_size=32",
        "--data.batch_size=16",
        "--data.num_workers=0",
        "--model.image_encoder.model_name=test_resnet",
        f"--trainer.logger.init_args.save_dir={root / 'runs'}",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
    ]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory) -> tuple[Path, list[str], Path]:
    """One fit (+ test of the best checkpoint) shared by the tests below."""
    root = tmp_path_factory.mktemp("cli")
    args = ["--config", str(CONFIGS / "demo.yaml"), *small_run_args(root)]
    main(["fit", *args, "--trainer.max_epochs=2"])
    run = root / "runs" / "demo" / "version_0"
    return root, args, run


def read_metrics(run: Path) -> dict[str, float]:
    return json.loads((run / "metrics.json").read_text())


def test_fit_writes_config_checkpoints_and_test_metrics(fitted) -> None:
    _, _, run = fitted
    assert (run / "config.yaml").is_file()
    checkpoints = {p.name for p in (run / "checkpoints").iterdir()}
    assert "last.ckpt" in checkpoints and any(n.startswith("best-") for n in checkpoints)
    metrics = read_metrics(run)
    with_intervals = ["acc", "balanced_acc", "macro_f1", "macro_auroc"]
    expected = {*with_intervals, "macro_precision", "macro_recall", "ece", "loss"}
    expected |= {f"{m}_ci_{end}" for m in with_intervals for end in ("low", "high")}
    assert {k.removeprefix("test/") for k in metrics} == expected
    assert all(0.0 <= v <= 1.0 for k, v in metrics.items() if k != "test/loss")
    for name in ("acc", "balanced_acc", "macro_f1"):  # percentile intervals around the point estimate
        assert metrics[f"test/{name}_ci_low"] <= metrics[f"test/{name}"] <= metrics[f"test/{name}_ci_high"]
    assert metrics["test/acc_ci_low"] < metrics["test/acc_ci_high"]
    evaluation = run / "evaluation"
    names = {p.name for p in evaluation.iterdir()}
    assert names == {
        "test_predictions.csv",
        "test_confusion_matrix.csv",
        "test_confusion_matrix.png",
        "test_classification_report.csv",
        "test_embedding_map.png",
    }
    predictions = list(csv.DictReader((evaluation / "test_predictions.csv").open()))
    assert len({row["id"] for row in predictions}) == 18 == len(predictions)  # every test case once
    assert all(
        sum(float(v) for k, v in row.items() if k.startswith("prob_")) == pytest.approx(1) for row in predictions
    )
    matrix = list(csv.reader((evaluation / "test_confusion_matrix.csv").open()))
    assert sum(int(x) for row in matrix[1:] for x in row[1:]) == 18  # every test sample once
    report = {r["class"]: r for r in csv.DictReader((evaluation / "test_classification_report.csv").open())}
    assert float(report["macro avg"]["recall"]) == pytest.approx(metrics["test/balanced_acc"], abs=1e-4)


def test_test_and_predict_from_a_checkpoint(fitted) -> None:
    root, args, run = fitted
    best = next((run / "checkpoints").glob("best-*.ckpt"))
    main(["test", *args, f"--ckpt_path={best}"])
    second = root / "runs" / "demo" / "version_1"  # a new run directory, not a clash with the first
    assert read_metrics(second) == pytest.approx(read_metrics(run))

    main(["predict", *args, f"--ckpt_path={best}"])
    rows = list(csv.DictReader((root / "runs" / "demo" / "version_2" / "predictions.csv").open()))
    class_names = ["akiec", "bcc", "bkl", "df", "mel", "nv"]
    assert list(rows[0]) == ["id", "prediction", *(f"prob_{c}" for c in class_names), "status", "error"]
    assert {r["status"] for r in rows} == {"ok"}
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)) == 18  # the test split, each id once
    for row in rows:
        probs = [float(row[f"prob_{c}"]) for c in class_names]
        assert sum(probs) == pytest.approx(1.0, abs=1e-4)
        assert row["prediction"] == class_names[probs.index(max(probs))]


def test_external_test_set_gets_its_own_metrics(fitted) -> None:
    root, args, run = fitted
    best = next((run / "checkpoints").glob("best-*.ckpt"))
    metadata = (root / "data" / "metadata.csv").read_text().splitlines()
    external = root / "site_b.csv"
    external.write_text("\n".join(metadata[:41]) + "\n")  # header + 40 rows, as another centre's CSV
    out = root / "external_runs"
    main(
        [
            "test",
            *args,
            f"--ckpt_path={best}",
            f"--trainer.logger.init_args.save_dir={out}",
            f'--data.test_sets={{"site_b": {{"csv_path": "{external}"}}}}',
        ]
    )
    metrics = read_metrics(out / "demo" / "version_0")
    internal = {k: v for k, v in metrics.items() if k.startswith("test/")}
    assert internal == pytest.approx(read_metrics(run))  # the internal test split is unaffected
    site_b = {k.removeprefix("test_site_b/"): v for k, v in metrics.items() if k.startswith("test_site_b/")}
    assert set(site_b) == {k.removeprefix("test/") for k in internal}
    assert not any("dataloader_idx" in k for k in metrics)
    matrix = list(csv.reader((out / "demo" / "version_0" / "evaluation" / "test_site_b_confusion_matrix.csv").open()))
    assert sum(int(x) for row in matrix[1:] for x in row[1:]) == 40  # the external set's own samples


def test_temperature_scaling_and_tta_at_test_time(fitted) -> None:
    root, args, run = fitted
    best = next((run / "checkpoints").glob("best-*.ckpt"))
    out = root / "calibrated_runs"
    main(
        [
            "test",
            *args,
            f"--ckpt_path={best}",
            f"--trainer.logger.init_args.save_dir={out}",
            "--evaluation.temperature_scaling=true",
            "--model.tta=[identity, hflip]",
        ]
    )
    metrics, plain = read_metrics(out / "demo" / "version_0"), read_metrics(run)
    assert metrics["test/temperature"] > 0 and metrics["test/temperature"] != pytest.approx(1.0)
    assert metrics["test/loss"] != pytest.approx(plain["test/loss"])


def test_explain_writes_one_figure_per_id(fitted, capsys) -> None:
    root, args, run = fitted
    best = next((run / "checkpoints").glob("best-*.ckpt"))
    ids = [row["image_id"] for row in csv.DictReader((root / "data" / "metadata.csv").open())][:2]
    out = root / "explained"
    main(["explain", *args, f"--ckpt_path={best}", "--ids", *ids, f"--out_dir={out}"])
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{i}.png" for i in ids)
    _, data = _model_and_data(args, best)
    twice = [data.collate(find_samples(data, ids, 0))["image"] for _ in range(2)]
    assert torch.equal(*twice)  # training samples too are shown without random augmentation
    printed = capsys.readouterr().out
    assert all(f"{i}: true " in printed for i in ids)
    with pytest.raises(KeyError, match="NOT_AN_ID"):
        main(["explain", *args, f"--ckpt_path={best}", "--ids", "NOT_AN_ID", f"--out_dir={out}"])


def run_cli(args: list[str], cwd: Path) -> None:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(
        [sys.executable, "-m", "medfusion", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


DDP = ["--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.accelerator=cpu"]


@pytest.mark.parametrize("command", ["validate", "test"])
def test_ddp_metrics_equal_single_process(fitted, command: str) -> None:
    """2 CPU processes see disjoint parts of the 21 validation / 18 test samples (no padded duplicates), and
    the gathered metrics (bootstrap intervals included) equal those of one process on the whole set."""
    root, args, run = fitted
    best = str(next((run / "checkpoints").glob("best-*.ckpt")))
    single_root, ddp_root = root / f"single_{command}", root / f"ddp_{command}"
    run_cli([command, *args, f"--ckpt_path={best}", f"--trainer.logger.init_args.save_dir={single_root}"], root)
    run_cli([command, *args, f"--ckpt_path={best}", f"--trainer.logger.init_args.save_dir={ddp_root}", *DDP], root)
    single = read_metrics(single_root / "demo" / "version_0")
    ddp = read_metrics(ddp_root / "demo" / "version_0")
    prefix = "val/" if command == "validate" else "test/"
    assert set(single) >= {f"{prefix}acc", f"{prefix}macro_f1", f"{prefix}macro_auroc"}
    assert ddp == pytest.approx(single, abs=1e-6)
    if command == "test":  # rank zero wrote the files, from all ranks' samples
        matrix = ddp_root / "demo" / "version_0" / "evaluation" / "test_confusion_matrix.csv"
        assert sum(int(x) for row in list(csv.reader(matrix.open()))[1:] for x in row[1:]) == 18


def test_ddp_test_from_shards_equals_one_process(fitted) -> None:
    """Under DDP each rank reads its share of the packed sets by global position: the gathered test metrics from
    shards equal one process's."""
    root, args, run = fitted
    best = str(next((run / "checkpoints").glob("best-*.ckpt")))
    main(["pack", *args, f"--out={root / 'shards'}"])
    shards = [*args, "--data=medfusion.data.ShardDataModule", f"--data.shards={root / 'shards'}", f"--ckpt_path={best}"]
    single_root, ddp_root = root / "single_shards", root / "ddp_shards"
    main(["test", *shards, f"--trainer.logger.init_args.save_dir={single_root}"])
    run_cli(["test", *shards, f"--trainer.logger.init_args.save_dir={ddp_root}", *DDP], root)
    single = read_metrics(single_root / "demo" / "version_0")
    assert "test/macro_auroc" in single
    assert read_metrics(ddp_root / "demo" / "version_0") == pytest.approx(single, abs=1e-6)


def test_ddp_predict_writes_every_id_once(fitted) -> None:
    root, args, run = fitted
    best = str(next((run / "checkpoints").glob("best-*.ckpt")))
    out = root / "ddp_predict"
    run_cli(["predict", *args, f"--ckpt_path={best}", f"--trainer.logger.init_args.save_dir={out}", *DDP], root)
    single = root / "single_predict"
    run_cli(["predict", *args, f"--ckpt_path={best}", f"--trainer.logger.init_args.save_dir={single}"], root)
    ddp_rows = list(csv.DictReader((out / "demo" / "version_0" / "predictions.csv").open()))
    single_rows = list(csv.DictReader((single / "demo" / "version_0" / "predictions.csv").open()))
    assert len(ddp_rows) == len({r["id"] for r in ddp_rows}) == len(single_rows) == 18
    by_id = {r["id"]: r for r in single_rows}
    for row in ddp_rows:
        assert row["prediction"] == by_id[row["id"]]["prediction"]
        for key in row:
            if key.startswith("prob_"):
                assert float(row[key]) == pytest.approx(float(by_id[row["id"]][key]), abs=1e-5)


def test_ddp_a_diverging_fit_stops_every_rank(fitted) -> None:
    """A NaN loss under 2-process DDP stops both ranks together (no hang), saving nothing; exit status 1."""
    root, args, _ = fitted
    out = root / "ddp_diverged"
    command = ["fit", *args, "--model.lr=1e6", f"--trainer.logger.init_args.save_dir={out}", *DDP]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(
        [sys.executable, "-m", "medfusion", *command], cwd=root, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 1, result.stderr[-3000:]
    assert "training stopped (DivergedError" in result.stderr and "The training loss is nan at step" in result.stderr
    assert not list(out.rglob("*.ckpt"))


def test_demo_data_command(tmp_path) -> None:
    main(["demo-data", str(tmp_path / "demo"), "--num_samples=30", "--image_size=16"])
    rows = list(csv.DictReader((tmp_path / "demo" / "metadata.csv").open()))
    texts = json.loads((tmp_path / "demo" / "reports.json").read_text())
    assert len(rows) == 30 and set(texts) == {r["image_id"] for r in rows}
    assert all((tmp_path / "demo" / "images" / f"{r['image_id']}.png").is_file() for r in rows)


def test_checkpoint_carries_class_names_and_tokenizer_and_loads_weights_only(fitted) -> None:
    _, _, run = fitted
    best = next((run / "checkpoints").glob("best-*.ckpt"))
    checkpoint = torch.load(best, weights_only=True)
    classes = ["akiec", "bcc", "bkl", "df", "mel", "nv"]
    carried = checkpoint["medfusion"]  # the model's: its classes and modalities, no tokenizer
    assert carried["format"] == CHECKPOINT_FORMAT and carried["class_names"] == classes
    assert "tokenizer" not in carried
    data = find_data_state(checkpoint, best)  # the datamodule's: what test/predict need instead of training data
    assert data["class_names"] == classes and data["modalities"] == {"image": "image", "text": "text"}
    tokenizer = data["tokenizer"]
    assert '"WordPiece"' in tokenizer["json"] and tokenizer["special_tokens"]["pad_token"]
    assert tokenizer_from_state(tokenizer).pad_token_id is not None


def test_predict_needs_no_training_data(fitted) -> None:
    """A new site's CSV, images and reports in their own folder; the model's classes and tokenizer come from the
    checkpoint, and the predictions equal those made with the training data at hand."""
    root, args, run = fitted
    best = next((run / "checkpoints").glob("best-*.ckpt"))
    rows = list(csv.DictReader((root / "data" / "metadata.csv").open()))[:12]
    out = root / "new_site_runs"
    site = new_site(root, "new_site", 12)
    main(["predict", *site_args(args, site, out), f"--ckpt_path={best}", "--data.batch_size=16"])
    predicted = list(csv.DictReader((out / "demo" / "version_0" / "predictions.csv").open()))
    assert [r["id"] for r in predicted] == [r["image_id"] for r in rows]
    model, data = _model_and_data(args, best)
    with torch.no_grad():
        batch = data.collate(find_samples(data, [r["image_id"] for r in rows], 0))
        expected = model.eval().predict_logits(batch).softmax(-1)
    for row, probs in zip(predicted, expected, strict=True):
        assert float(row["prob_akiec"]) == pytest.approx(float(probs[0]), abs=1e-5)


def test_predict_from_the_image_cache_equals_predict_from_the_files(fitted) -> None:
    """Evaluation inputs from the decoded-image cache are exactly the decoded files: the same probabilities."""
    root, args, run = fitted
    best = next((run / "checkpoints").glob("best-*.ckpt"))
    rows = {}
    for name, extra in (("files", []), ("cached", [f"--data.image_cache={root / 'image_cache'}"])):
        out = root / f"predict_{name}"
        main(["predict", *args, f"--ckpt_path={best}", f"--trainer.logger.init_args.save_dir={out}", *extra])
        rows[name] = list(csv.DictReader((out / "demo" / "version_0" / "predictions.csv").open()))
    assert any((root / "image_cache").iterdir())
    assert rows["cached"] == rows["files"]


@pytest.mark.slow
def test_a_run_from_shards_equals_a_run_from_the_folder(tmp_path: Path) -> None:
    """medfusion pack, then a fit from the shards that dies in its second epoch and is resumed: the metrics of a
    two-epoch fit from the folder with the image cache; predict from its checkpoint gives every test id once."""
    args = ["--config", str(CONFIGS / "demo.yaml"), *small_run_args(tmp_path)]
    main(["pack", *args, f"--out={tmp_path / 'shards'}"])
    shards = ["--data=medfusion.data.ShardDataModule", f"--data.shards={tmp_path / 'shards'}"]
    folder_run = [*args, f"--data.image_cache={tmp_path / 'image_cache'}", "--trainer.max_epochs=2"]
    main(["fit", *folder_run, f"--trainer.logger.init_args.save_dir={tmp_path / 'folder'}"])
    shard_run = [
        *args,
        *shards,
        "--trainer.max_epochs=2",
        f"--trainer.logger.init_args.save_dir={tmp_path / 'shards_run'}",
    ]
    with pytest.raises(RuntimeError, match="stopped at step 9"):  # in the second epoch (7 steps per epoch)
        main(["fit", *shard_run, "--trainer.callbacks+=killpoint.FailAt", "--trainer.callbacks.step=9"])
    main(["fit", *shard_run, "--ckpt_path=last"])
    folder = read_metrics(tmp_path / "folder" / "demo" / "version_0")
    resumed = read_metrics(tmp_path / "shards_run" / "demo" / "version_0")
    assert resumed.keys() == folder.keys()
    for key, value in folder.items():
        assert resumed[key] == pytest.approx(value, abs=1e-6), key
    best = next((tmp_path / "shards_run" / "demo" / "version_0" / "checkpoints").glob("best-*.ckpt"))
    out = tmp_path / "predicted"
    main(["predict", *args, *shards, f"--ckpt_path={best}", f"--trainer.logger.init_args.save_dir={out}"])
    predicted = list(csv.DictReader((out / "demo" / "version_0" / "predictions.csv").open()))
    test_ids = json.loads((tmp_path / "shards" / "medfusion.json").read_text())["sets"]["test"]["ids"]
    assert [row["id"] for row in predicted] == test_ids


def _model_and_data(args: list[str], ckpt: Path):
    """The fitted model and the demo data (all splits set up), built from the same config as the CLI."""
    from medfusion.cli import configured
    from medfusion.models import ClassifierModule
    from medfusion.runs.checkpoints import load_weights

    cli = configured(ClassifierModule, list(args))
    load_weights(cli.model, ckpt)
    cli.datamodule.setup(None)
    return cli.model, cli.datamodule


def test_a_checkpoint_of_other_classes_is_refused_naming_both(fitted) -> None:
    _, args, run = fitted
    best = next((run / "checkpoints").glob("best-*.ckpt"))
    with pytest.raises(ValueError, match=r"trained on the classes \['akiec', .*'nv'\] but the data has \['nv', 'mel'"):
        main(["test", *args, f"--ckpt_path={best}", "--data.class_names=[nv, mel, bkl, bcc, akiec, df]"])


def new_site(root: Path, name: str, count: int) -> Path:
    """``count`` demo samples copied into their own folder (cases.csv, images/, reports.json), as another site's."""
    source = root / "data"
    rows = list(csv.DictReader((source / "metadata.csv").open()))[:count]
    site = root / name
    (site / "images").mkdir(parents=True)
    reports = json.loads((source / "reports.json").read_text())
    for row in rows:
        image = next((source / "images").rglob(f"{row['image_id']}.*"))
        (site / "images" / image.name).write_bytes(image.read_bytes())
    (site / "cases.csv").write_text("image_id\n" + "".join(f"{r['image_id']}\n" for r in rows))
    (site / "reports.json").write_text(json.dumps({r["image_id"]: reports[r["image_id"]] for r in rows}))
    return site


def site_args(args: list[str], site: Path, out: Path) -> list[str]:
    return [
        *(a for a in args if not a.startswith("--data.")),
        "--data=medfusion.data.MultimodalDataModule",
        f"--data.predict_csv={site / 'cases.csv'}",
        f"--data.image_dir={site / 'images'}",
        f"--data.text_json={site / 'reports.json'}",
        "--data.image_size=32",
        f"--trainer.logger.init_args.save_dir={out}",
    ]


def test_predict_keeps_a_row_for_an_unreadable_image(fitted, capsys) -> None:
    """With on_bad_image: skip, an image that fails to decode gets a row with status 'error' and the reason, the
    other nine their predictions, and the command returns exit status 1 with a summary naming the count."""
    root, args, run = fitted
    best = next((run / "checkpoints").glob("best-*.ckpt"))
    site = new_site(root, "site_with_bad_image", 10)
    bad = sorted((site / "images").iterdir())[4]
    bad.write_bytes(bad.read_bytes()[:60])  # truncated
    out = root / "bad_image_runs"
    extra = ["--data.on_bad_image=skip", "--data.verify_images=false", f"--ckpt_path={best}"]
    status = main(["predict", *site_args(args, site, out), *extra])
    rows = list(csv.DictReader((out / "demo" / "version_0" / "predictions.csv").open()))
    expected = (site / "cases.csv").read_text().splitlines()[1:]
    assert [r["id"] for r in rows] == expected  # every requested id, once, in order
    failed = [r for r in rows if r["status"] == "error"]
    assert [r["id"] for r in failed] == [bad.stem]
    assert failed[0]["prediction"] == "" and str(bad) in failed[0]["error"]
    assert all(r["prediction"] and r["error"] == "" for r in rows if r["status"] == "ok")
    summary = capsys.readouterr().err
    assert status == 1 and "Predictions for 10 samples" in summary and "1 could not be predicted" in summary


def test_a_checkpoint_with_non_finite_weights_is_refused(fitted, tmp_path) -> None:
    _, args, run = fitted
    checkpoint = torch.load(next((run / "checkpoints").glob("best-*.ckpt")), weights_only=True)
    name = next(k for k, v in checkpoint["state_dict"].items() if v.is_floating_point())
    checkpoint["state_dict"][name][...] = float("nan")
    diverged = tmp_path / "diverged.ckpt"
    torch.save(checkpoint, diverged)
    for command in ("test", "predict"):
        out = tmp_path / command
        with pytest.raises(CheckpointError, match=rf"diverged\.ckpt: 1 of \d+ weight tensors hold NaN .*{name}"):
            main([command, *args, f"--ckpt_path={diverged}", f"--trainer.logger.init_args.save_dir={out}"])
        assert not list(out.rglob("predictions.csv")) and not list(out.rglob("metrics.json"))


def test_a_diverging_fit_stops_at_once_and_saves_nothing(fitted, tmp_path) -> None:
    _, args, _ = fitted
    out = tmp_path / "runs"
    with pytest.raises(DivergedError, match=r"training loss is nan at step \d+ .*model\.lr=1000000\.0"):
        main(["fit", *args, "--model.lr=1e6", "--trainer.max_epochs=3", f"--trainer.logger.init_args.save_dir={out}"])
    assert not list(out.rglob("*.ckpt")) and not list(out.rglob("metrics.json"))


def test_a_remote_checkpoint_loads_when_allowed(fitted, tmp_path, monkeypatch) -> None:
    """--allow_remote_ckpt true downloads the file from a loopback server once and tests it like the local one."""
    import threading
    from functools import partial
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    _, args, run = fitted
    best = next((run / "checkpoints").glob("best-*.ckpt"))
    served = tmp_path / "served"
    served.mkdir()
    (served / "model.ckpt").write_bytes(best.read_bytes())
    monkeypatch.setenv("MEDFUSION_CACHE", str(tmp_path / "cache"))
    handler = partial(SimpleHTTPRequestHandler, directory=str(served))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/model.ckpt"
        out = tmp_path / "remote"
        main(
            [
                "test",
                *args,
                f"--ckpt_path={url}",
                "--allow_remote_ckpt=true",
                f"--trainer.logger.init_args.save_dir={out}",
            ]
        )
    finally:
        server.shutdown()
        server.server_close()
    assert read_metrics(out / "demo" / "version_0") == pytest.approx(read_metrics(run))
