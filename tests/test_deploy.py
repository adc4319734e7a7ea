"""A trained model leaving the lab: ``medfusion export`` (ONNX + preprocessing + parity + model card) for several
fusions and heads, the :class:`Predictor` from a checkpoint and from an export (same answers, the datamodule's
preprocessing, no Lightning on the export path), its input errors, and what a checkpoint may make it build."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from test_cli import CONFIGS

from medfusion.cli import console, main
from medfusion.data import DataError
from medfusion.data.errors import ConfigError
from medfusion.deploy import Predictor
from medfusion.deploy.inputs import flat_arrays
from medfusion.deploy.onnx_export import ParityReport
from medfusion.deploy.rebuild import model_from_checkpoint
from medfusion.deploy.runtime import require_onnxruntime
from medfusion.runs.checkpoints import CheckpointError

pytestmark = pytest.mark.usefixtures("one_thread")

FIT = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=3", "--trainer.limit_val_batches=1",
       "--data.num_samples=120"]  # fmt: skip
TABULAR = ["--config", str(CONFIGS / "demo_tabular.yaml")]
VARIANTS = {  # every modality kind, and the fusions and heads the acceptance names (CORAL on the graded demo)
    "concat_tabular": TABULAR,
    "gated_coral": ["--config", str(CONFIGS / "demo_graded.yaml"), "--config", str(CONFIGS / "fusion/gated.yaml")],
    "cross_attention": [
        "--config", str(CONFIGS / "demo.yaml"), "--config", str(CONFIGS / "fusion/cross_attention.yaml"),
    ],
    "moe": ["--config", str(CONFIGS / "demo.yaml"), "--config", str(CONFIGS / "head/moe.yaml")],
}  # fmt: skip


def fit_run(root: Path, config: list[str], tiny_run) -> Path:
    """A few training steps of ``config`` (tested on its best checkpoint), returning the best checkpoint."""
    main(["fit", *config, *tiny_run(root), *FIT])
    return next(root.rglob("best-*.ckpt"))


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_run) -> dict[str, tuple[Path, Path]]:
    """Per variant: the checkpoint and the folder ``medfusion export`` wrote."""
    done = {}
    for name, config in VARIANTS.items():
        root = tmp_path_factory.mktemp(name)
        checkpoint = fit_run(root, config, tiny_run)
        main(["export", f"--ckpt_path={checkpoint}", f"--out={root / 'export'}"])
        done[name] = (checkpoint, root / "export")
    return done


@pytest.mark.slow
@pytest.mark.parametrize("name", list(VARIANTS))
def test_export_writes_the_model_its_preprocessing_and_a_passing_parity_report(exported, name: str) -> None:
    _, out = exported[name]
    assert {p.name for p in out.iterdir()} >= {"model.onnx", "preprocessing.json", "parity.json", "MODEL_CARD.md"}
    report = json.loads((out / "parity.json").read_text())
    assert report["passed"] and report["max_abs_diff"] <= 1e-4 and report["samples"] >= 10
    assert report["top_class_agreement"] == 1.0
    meta = json.loads((out / "preprocessing.json").read_text())
    session = require_onnxruntime().InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == meta["inputs"]
    assert all(i.shape[0] == "batch" for i in session.get_inputs())  # the batch axis is dynamic


@pytest.mark.slow
@pytest.mark.parametrize("name", list(VARIANTS))
def test_predictor_from_checkpoint_and_from_export_agree_on_the_test_split(exported, name: str) -> None:
    checkpoint, out = exported[name]
    from_checkpoint, from_export = Predictor.from_checkpoint(checkpoint), Predictor.from_export(out)
    cases, _ = split_cases(checkpoint, from_checkpoint)
    torch_side, onnx_side = from_checkpoint.predict_batch(cases), from_export.predict_batch(cases, batch_size=7)
    assert [p.label for p in torch_side] == [p.label for p in onnx_side]
    for a, b in zip(torch_side, onnx_side, strict=True):
        assert max(abs(a.probabilities[k] - b.probabilities[k]) for k in a.probabilities) < 1e-4
    if name == "gated_coral":
        risks = torch_side[0].risks
        assert list(risks) == from_checkpoint.class_names[1:] and risks == dict(
            sorted(risks.items(), key=lambda x: -x[1])
        )


def run_datamodule(checkpoint: Path):
    """The run's data (its config.yaml), set up for testing from the checkpoint alone."""
    from medfusion.cli import configured
    from medfusion.models import ClassifierModule

    config = yaml.safe_load((checkpoint.parent.parent / "config.yaml").read_text())
    parts = {key: value for key, value in config.items() if key in ("model", "data")}
    args = ["--config", yaml.safe_dump(parts), f"--data.from_checkpoint={checkpoint}"]
    datamodule = configured(ClassifierModule, args).datamodule
    datamodule.setup("test")
    return datamodule


def split_cases(checkpoint: Path, predictor: Predictor) -> tuple[list[dict], pd.DataFrame]:
    """The demo test split of the run of ``checkpoint`` as Predictor cases (paths, texts, tabular values) and the
    CSV rows they come from."""
    root = Path(yaml.safe_load((checkpoint.parent.parent / "config.yaml").read_text())["data"]["init_args"]["root"])
    table = pd.read_csv(root / "metadata.csv", dtype=str, keep_default_na=False)
    reports = json.loads((root / "reports.json").read_text())
    rows = table.set_index("image_id").loc[list(run_datamodule(checkpoint).datasets["test"].ids)].reset_index()
    tabular = predictor.preprocessing.tabular.spec.columns if predictor.preprocessing.tabular else []
    cases = []
    for _, row in rows.iterrows():
        case = {"image": str(root / "images" / f"{row.image_id}.png"), "text": reports[row.image_id]}
        if tabular:
            case["tabular"] = {c: row[c] or None for c in tabular}
        cases.append({k: v for k, v in case.items() if k in predictor.modalities})
    return cases, rows


@pytest.mark.slow
def test_the_predictor_prepares_a_case_exactly_as_the_datamodule_does(exported) -> None:
    checkpoint, _ = exported["concat_tabular"]
    predictor = Predictor.from_checkpoint(checkpoint)
    datamodule = run_datamodule(checkpoint)
    dataset = datamodule.datasets["test"]
    batch = datamodule.collate([dataset[i] for i in range(6)])
    expected = {k: v.numpy() for k, v in flat_arrays(batch, predictor.modalities).items()}
    cases, rows = split_cases(checkpoint, predictor)
    by_id = dict(zip(rows.image_id, cases, strict=True))
    got = predictor.preprocessing.arrays([by_id[i] for i in batch["id"]])
    assert list(got) == list(expected)
    for name in expected:
        np.testing.assert_allclose(got[name], expected[name], atol=1e-6, err_msg=name)


@pytest.mark.slow
def test_the_export_path_imports_no_lightning(exported) -> None:
    _, out = exported["concat_tabular"]
    code = (
        "import sys\nfrom medfusion.deploy import Predictor\n"
        f"p = Predictor.from_export({str(out)!r})\n"
        "r = p.predict(image=None, text='a changing mole', tabular={'age': 50, 'ldh_u_l': None, 'sex': 'male', "
        "'site': 'back'})\n"
        "assert abs(sum(r.probabilities.values()) - 1) < 1e-5, r\n"
        "loaded = [m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning', 'torchmetrics')]\n"
        "assert not loaded, loaded[:5]\nprint('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


@pytest.mark.slow
def test_predict_frame_adds_predictions_and_probabilities(exported) -> None:
    checkpoint, out = exported["concat_tabular"]
    predictor = Predictor.from_export(out)
    cases, rows = split_cases(checkpoint, predictor)
    frame = rows.assign(image=[c["image"] for c in cases], text=[c["text"] for c in cases]).reset_index(drop=True)
    frame.loc[0, "text"] = None  # a missing modality
    result = predictor.predict_frame(frame)
    assert len(result) == len(frame) and set(result["prediction"]) <= set(predictor.class_names)
    probs = result[[f"prob_{c}" for c in predictor.class_names]].to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    single = predictor.predict(image=cases[1]["image"], text=cases[1]["text"], tabular=cases[1]["tabular"])
    assert result.loc[1, "prediction"] == single.label


@pytest.mark.slow
def test_the_model_card_holds_the_data_metrics_and_the_use_to_complete(exported) -> None:
    checkpoint, out = exported["gated_coral"]
    card = (out / "MODEL_CARD.md").read_text()
    metrics = json.loads((checkpoint.parent.parent / "metrics.json").read_text())
    assert "| none |" in card and "| proliferative |" in card and "| train | val | test |" in card
    assert f"{metrics['test/qwk']:.3f}" in card and "quadratic weighted kappa" in card
    assert f"[{metrics['test/qwk_ci_low']:.3f}, {metrics['test/qwk_ci_high']:.3f}]" in card
    assert "## Intended use and limitations" in card and "To be written by the model's authors" in card
    assert "parity passed" in card and "```yaml" in card and "patient_id" in card


@pytest.mark.slow
def test_predictor_refuses_bad_cases_naming_the_case_and_the_fix(exported) -> None:
    checkpoint, out = exported["concat_tabular"]
    predictor = Predictor.from_export(out)
    good = {"image": None, "text": "a mole", "tabular": {"age": 40, "ldh_u_l": 150.0, "sex": "female", "site": "back"}}
    bad_cases = [
        ({**good, "image": str(out / "missing.png")}, "missing.png"),
        ({**good, "image": str(out / "preprocessing.json")}, "cannot be read"),
        ({**good, "text": "   "}, "non-empty string"),
        ({**good, "tabular": {**good["tabular"], "age": "forty"}}, "'age' has 'forty'"),
        ({**good, "tabular": {"age": 40}}, "lack ['ldh_u_l', 'sex', 'site']"),
        ({**good, "xray": "a.png"}, "['xray']"),
        ({**good, "image": np.zeros((4, 4), dtype=np.uint8)}, "[H, W, 3] uint8"),
    ]
    for case, needle in bad_cases:
        with pytest.raises(DataError) as info:
            predictor.predict_batch([good, case])
        assert needle in str(info.value) and "Case 1" in str(info.value) and "Fix" in str(info.value), needle
    with pytest.raises(ConfigError, match="from_checkpoint"):
        predictor.predict(explain=True, **good)
    explained = Predictor.from_checkpoint(checkpoint).predict(explain=True, **good)
    assert explained.explanation is not None and explained.explanation.images == {}  # no image given, none shown


# ----------------------------------------------------------------------------------------------- fast checks
def test_a_missing_export_extra_names_the_install_command(monkeypatch, capsys, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    with pytest.raises(ConfigError, match=r"pip install 'medfusion\[export\]'"):
        require_onnxruntime()
    with pytest.raises(SystemExit) as info:
        console(["export", f"--ckpt_path={tmp_path / 'x.ckpt'}", f"--out={tmp_path}"])
    assert info.value.code == 2 and "medfusion[export]" in capsys.readouterr().err


def test_parity_report_fails_above_its_tolerance() -> None:
    assert ParityReport(10, 5e-5, 1.0).passed and not ParityReport(10, 2e-4, 1.0).passed
    assert "FAILED" in ParityReport(10, 2e-4, 0.9).line()


def test_a_checkpoint_naming_foreign_classes_builds_nothing(tmp_path: Path, tiny_run) -> None:
    checkpoint = fit_run(tmp_path, ["--config", str(CONFIGS / "demo_image.yaml")], tiny_run)
    state = torch.load(checkpoint, weights_only=True)
    state["hyper_parameters"]["head"] = {"class_path": "subprocess.Popen", "init_args": {"args": ["touch", "x"]}}
    forged = tmp_path / "forged.ckpt"
    torch.save(state, forged)
    with pytest.raises(CheckpointError, match=r"subprocess\.Popen.*trusted"):
        model_from_checkpoint(forged)
    with pytest.raises(CheckpointError, match="local files only"):
        Predictor.from_checkpoint("https://example.org/model.ckpt")
    assert not (Path.cwd() / "x").exists()


def readme_py_blocks() -> list[str]:
    """The README's ``py`` examples: the Predictor and the web service, which need a trained model."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    return re.findall(r"```py\n(.*?)```", readme, flags=re.DOTALL)


@pytest.mark.slow
def test_the_readme_predictor_and_service_examples_run(exported, tmp_path: Path, monkeypatch) -> None:
    checkpoint, out = exported["cross_attention"]  # an image + text demo model, as in the README
    monkeypatch.chdir(tmp_path)
    (tmp_path / "export").symlink_to(out)
    (tmp_path / "runs/demo/version_0/checkpoints").mkdir(parents=True)
    shutil.copy(checkpoint, tmp_path / "runs/demo/version_0/checkpoints/last.ckpt")
    image = next((checkpoint.parents[4] / "data" / "images").glob("*.png"))
    for name in ("lesion.png", "a.png", "b.png"):
        shutil.copy(image, tmp_path / name)
    predictor_block, service_block = readme_py_blocks()
    namespace: dict = {"__name__": "readme_example"}
    exec(compile(predictor_block, "README.md Predictor example", "exec"), namespace)
    assert namespace["result"].label in namespace["predictor"].class_names
    assert namespace["explanation"].cams["image"].shape[-1] == namespace["explanation"].images["image"].shape[-1]

    class App:  # the few FastAPI names the example uses, so that it runs without FastAPI installed
        def post(self, path: str):
            return lambda function: function

    class Upload:
        async def read(self) -> bytes:
            return image.read_bytes()

    fake = types.ModuleType("fastapi")
    fake.FastAPI, fake.Form, fake.UploadFile = App, lambda *a, **k: None, Upload
    monkeypatch.setitem(sys.modules, "fastapi", fake)
    service: dict = {"__name__": "readme_service"}
    exec(compile(service_block, "README.md service example", "exec"), service)
    answer = asyncio.run(service["predict"](Upload(), "A changing mole."))
    assert answer["label"] in namespace["predictor"].class_names
    assert abs(sum(answer["probabilities"].values()) - 1) < 1e-5


def test_a_checkpoint_without_the_preprocessing_sizes_is_refused_for_serving() -> None:
    from medfusion.deploy.inputs import Preprocessing

    old = {"class_names": ["a", "b"], "modalities": {"image": "image"}, "tokenizer": None, "tabular": None}
    with pytest.raises(CheckpointError, match=r"\['image_size', 'mean', 'std', 'max_length'\].*retrain"):
        Preprocessing.from_data_state(old, graded=False, where="old.ckpt")


@pytest.mark.slow
def test_export_exits_with_status_1_when_parity_fails(exported, monkeypatch, tmp_path: Path, capsys) -> None:
    import medfusion.export

    checkpoint, _ = exported["moe"]
    monkeypatch.setattr(medfusion.export, "parity", lambda *args: ParityReport(20, 3e-4, 0.95))
    with pytest.raises(SystemExit) as info:
        console(["export", f"--ckpt_path={checkpoint}", f"--out={tmp_path / 'out'}"])
    assert info.value.code == 1 and "does not reproduce" in capsys.readouterr().err
    assert json.loads((tmp_path / "out" / "parity.json").read_text())["passed"] is False
