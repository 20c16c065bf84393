"""training_utils on a toy model on CPU: checkpoints, resume, EMA, validation images, Hub push."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import time

import numpy as np
import pytest
import torch
from accelerate.state import AcceleratorState, GradientState
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from huggingface_hub import ModelCard
from PIL import Image

from diffusers_city import training_utils as tu


class TrainingUtilsToyModel(ModelMixin, ConfigMixin):
    @register_to_config
    def __init__(self, width: int = 3):
        super().__init__()
        self.linear = torch.nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Each test builds its own Accelerator; accelerate keeps process-wide singletons."""
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def parse_default(tmp_path):
    """The shared flags with their defaults (``--report_to`` not given)."""
    return tu.training_parser("toy").parse_args(["--output_dir", str(tmp_path / "run"), "--cpu"])


def parse(tmp_path, *extra: str):
    return tu.training_parser("toy").parse_args(["--output_dir", str(tmp_path / "run"), "--report_to", "none", "--cpu", *extra])


def train(args, steps: int, start_step: int = 0):
    """A few SGD-with-momentum steps; checkpoints every --checkpointing_steps. Returns the live objects."""
    accelerator = tu.setup_accelerator(args)
    model = TrainingUtilsToyModel()
    ema = tu.create_ema(model, args)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.learning_rate, momentum=0.9)
    model, optimizer = accelerator.prepare(model, optimizer)
    step = tu.maybe_resume(accelerator, args)
    assert step == start_step
    data = torch.Generator().manual_seed(123)
    while step < start_step + steps:
        x = torch.randn(4, 3, generator=data)
        loss = (model(x) - 2 * x).pow(2).mean()
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        if ema is not None:
            ema.step(model.parameters())
        step += 1
        if step % args.checkpointing_steps == 0:
            tu.save_checkpoint(accelerator, args, step)
    return accelerator, model, optimizer, ema


def test_parser_defaults_and_validation(tmp_path):
    args = parse(tmp_path)
    assert args.mixed_precision == "no" and args.preset == "tiny" and args.checkpoints_total_limit is None
    assert not args.use_ema and not args.push_to_hub
    parser = tu.training_parser("toy")
    for bad in (["--mixed_precision", "fp32"], ["--train_batch_size", "0"], ["--lr_scheduler", "nope"]):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)


def test_checkpoint_limit_and_resume_latest_restores_everything(tmp_path):
    args = parse(
        tmp_path,
        "--checkpointing_steps",
        "2",
        "--checkpoints_total_limit",
        "2",
        "--use_ema",
        "--ema_decay",
        "0.5",
        "--learning_rate",
        "0.05",
    )
    _, model, optimizer, ema = train(args, steps=6)
    run = tmp_path / "run"
    assert [p.name for p in tu.list_checkpoints(run)] == ["checkpoint-4", "checkpoint-6"]
    assert not list(run.glob(".checkpoint-*"))
    saved_weights = {k: v.clone() for k, v in model.state_dict().items()}
    saved_momentum = [optimizer.state[p]["momentum_buffer"].clone() for p in model.parameters()]
    saved_shadow = [p.clone() for p in ema.shadow_params]
    assert not all(torch.equal(a, b) for a, b in zip(saved_shadow, model.parameters()))

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    args.resume_from_checkpoint = "latest"
    _, model2, optimizer2, ema2 = train(args, steps=0, start_step=6)
    assert all(torch.equal(model2.state_dict()[k], v) for k, v in saved_weights.items())
    momentum = [optimizer2.state[p]["momentum_buffer"] for p in model2.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(momentum, saved_momentum))
    assert all(torch.equal(a, b) for a, b in zip(ema2.shadow_params, saved_shadow))
    assert ema2.optimization_step == ema.optimization_step == 6


def test_resume_by_name_and_bad_values(tmp_path):
    args = parse(tmp_path, "--checkpointing_steps", "1")
    train(args, steps=2)
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    accelerator = tu.setup_accelerator(args)
    model = TrainingUtilsToyModel()
    accelerator.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
    args.resume_from_checkpoint = "checkpoint-1"
    assert tu.maybe_resume(accelerator, args) == 1
    args.resume_from_checkpoint = "checkpoint-99"
    with pytest.raises(FileNotFoundError, match="checkpoint-99"):
        tu.maybe_resume(accelerator, args)
    (tmp_path / "run" / "notacheckpoint").mkdir()
    args.resume_from_checkpoint = "notacheckpoint"
    with pytest.raises(ValueError, match="checkpoint-<step>"):
        tu.maybe_resume(accelerator, args)
    args.resume_from_checkpoint, args.output_dir = "latest", str(tmp_path / "empty")
    assert tu.maybe_resume(accelerator, args) == 0


def test_create_ema_is_none_without_flag(tmp_path):
    args = parse(tmp_path)
    tu.setup_accelerator(args)
    assert tu.create_ema(TrainingUtilsToyModel(), args) is None


def test_tracker_only_when_installed(tmp_path):
    args = parse(tmp_path, "--report_to", "tensorboard")
    accelerator = tu.setup_accelerator(args)
    installed = importlib.util.find_spec("tensorboard") is not None
    assert [t.name for t in accelerator.trackers] == (["tensorboard"] if installed else [])
    accelerator.end_training()


def test_tracker_warns_only_when_asked_for(tmp_path, monkeypatch, caplog):
    """No tensorboard installed: silent by default, a warning when --report_to names it."""
    monkeypatch.setattr(tu.importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else object())
    with caplog.at_level("WARNING"):
        assert tu._tracker(parse_default(tmp_path).report_to) is None
    assert "tensorboard" not in caplog.text
    with caplog.at_level("WARNING"):
        assert tu._tracker("tensorboard") is None
    assert "--report_to tensorboard: package tensorboard is not installed" in caplog.text


def test_validation_images_written_atomically(tmp_path):
    args = parse(tmp_path)
    accelerator = tu.setup_accelerator(args)
    pixels = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    images = {"render": Image.fromarray(pixels), "depth": Image.fromarray(pixels[..., 0])}
    paths = tu.log_validation_images(accelerator, args, images, step=7)
    folder = tmp_path / "run" / "validation" / "step-7"
    assert paths == [folder / "render.png", folder / "depth.png"]
    assert np.array_equal(np.asarray(Image.open(paths[0])), pixels)
    assert np.array_equal(np.asarray(Image.open(paths[1])), pixels[..., 0])
    assert sorted(p.name for p in folder.iterdir()) == ["depth.png", "render.png"]
    with pytest.raises(ValueError, match="plain file names"):
        tu.log_validation_images(accelerator, args, {"../escape": images["render"]}, step=8)
    with pytest.raises(ValueError, match="PIL"):
        tu.log_validation_images(accelerator, args, {"x": pixels}, step=8)
    assert not (tmp_path / "run" / "validation" / "step-8").exists()


def test_push_folder_to_hub_writes_model_card(tmp_path, offline_hub):
    args = parse(tmp_path, "--push_to_hub", "--hub_model_id", "city-org/toy", "--learning_rate", "0.003")
    folder = tmp_path / "pipeline"
    TrainingUtilsToyModel().save_pretrained(folder)
    (folder / "checkpoint-5").mkdir()
    (folder / "checkpoint-5" / "state.bin").write_bytes(b"x")
    system = tmp_path / "toy.md"
    system.write_text("## Toy system\n\nTrained on $dataset.\n")
    fields = {"title": "Toy city model", "description": "A toy.", "dataset": "procedural cities"}

    with pytest.raises(ValueError, match="dataset"):
        tu.push_folder_to_hub(args, folder, str(system), {"title": "t", "description": "d"})
    with pytest.raises(ValueError, match="repo_id"):
        tu.push_folder_to_hub(args, folder, str(system), {**fields, "repo_id": "x"})
    assert not offline_hub.repo_folder("city-org/toy").exists()

    assert tu.push_folder_to_hub(args, folder, str(system), fields) == "city-org/toy"
    files = offline_hub.files("city-org/toy")
    assert {"README.md", "config.json", "diffusion_pytorch_model.safetensors"} <= set(files)
    assert not any(f.startswith("checkpoint-") for f in files)
    card = ModelCard.load(offline_hub.snapshot("city-org/toy") / "README.md")
    assert card.text.startswith("# Toy city model")
    for text in (
        "A toy.",
        "## Toy system",
        "Trained on procedural cities.",
        'DiffusionPipeline.from_pretrained("city-org/toy")',
        "- `learning_rate`: 0.003",
    ):
        assert text in card.text
    assert card.data.library_name == "diffusers"
    assert card.data.tags == ["diffusers-city", "toy"]

    # A second push keeps the Hub card's metadata without duplicating tags, and refreshes the text.
    tu.push_folder_to_hub(args, folder, str(system), {**fields, "title": "Toy v2"})
    card = ModelCard.load(offline_hub.snapshot("city-org/toy") / "README.md")
    assert card.text.startswith("# Toy v2") and card.data.tags == ["diffusers-city", "toy"]


def test_out_of_time_follows_max_train_minutes(tmp_path):
    """No limit never stops; a passed limit stops; a limit not yet reached does not."""
    start = time.time()
    accelerator = tu.setup_accelerator(parse(tmp_path))
    assert not tu.out_of_time(accelerator, parse(tmp_path), start - 3600)
    assert tu.out_of_time(accelerator, parse(tmp_path, "--max_train_minutes", "0.5"), start - 60)
    assert not tu.out_of_time(accelerator, parse(tmp_path, "--max_train_minutes", "5"), start)


def test_echo_batches_repeats_and_resumes_mid_batch():
    """Each batch comes ``echo`` times; starting at any micro-step continues the same sequence."""
    full = list(tu.echo_batches(range(4), 3))
    assert full == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    for start in range(len(full)):
        assert list(tu.echo_batches(range(4), 3, start)) == full[start:]
    assert list(tu.echo_batches(range(3), 1)) == [0, 1, 2]
    with pytest.raises(ValueError, match="data echo must be >= 1"):
        next(tu.echo_batches(range(3), 0))


def test_step_losses_average_micro_steps_and_stop_on_a_non_finite_loss(tmp_path):
    """Means over a step's micro-steps, named for logging; the next step starts from zero."""
    accelerator = tu.setup_accelerator(parse(tmp_path))
    losses = tu.StepLosses(2)
    losses.add({"loss": torch.tensor(1.0), "kl": torch.tensor(3.0)})
    losses.add({"loss": torch.tensor(3.0), "kl": torch.tensor(6.0)})
    means = losses.finish(0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1), lambda _: 1)
    assert losses.logs(accelerator, means, scheduler) == {"loss": 2.0, "kl": 4.5, "lr": 0.1}
    losses.add({"loss": torch.tensor(4.0), "kl": torch.tensor(2.0)})
    assert losses.finish(1).tolist() == [2.0, 1.0]
    losses.add({"loss": torch.tensor(float("nan")), "kl": torch.tensor(1.0)})
    with pytest.raises(RuntimeError, match=r"non-finite loss at step 7: \{'loss': nan, 'kl': 1.0\}"):
        losses.finish(7)


def test_optimizer_step_clips_and_steps_once_per_accumulated_step(tmp_path):
    """Two micro-steps: the weights move once, by the clipped gradient (plain SGD, lr 1)."""
    accelerator = tu.setup_accelerator(parse(tmp_path, "--gradient_accumulation_steps", "2"))
    model = torch.nn.Linear(4, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (step + 1))
    model, optimizer, lr_scheduler = accelerator.prepare(model, optimizer, lr_scheduler)
    x = torch.full((1, 4), 10.0)
    for micro in range(2):
        with accelerator.accumulate(model):
            tu.optimizer_step(accelerator, model(x).sum(), model.parameters(), optimizer, lr_scheduler, 0.5)
        if micro == 0:
            assert not model.weight.abs().any() and model.weight.grad is not None
    assert torch.allclose(model.weight, torch.full((1, 4), -0.25))  # the gradient (10, 10, 10, 10) clipped to norm 0.5
    assert model.weight.grad is None or not model.weight.grad.any()
    assert lr_scheduler.get_last_lr() == [0.5]


def test_step_emas_skips_modules_without_one(tmp_path):
    args = parse(tmp_path, "--use_ema")
    accelerator = tu.setup_accelerator(args)
    a, b = TrainingUtilsToyModel(), TrainingUtilsToyModel()
    ema = tu.create_ema(a, args, accelerator)
    tu.step_emas([ema, None], [a, b])
    assert ema.optimization_step == 1


def test_finish_step_logs_checkpoints_validates_and_stops_on_schedule(tmp_path):
    """Each piece at its own interval; past the time limit a checkpoint is saved and the run stops."""
    import time

    every = ("--logging_steps", "2", "--validation_steps", "3", "--checkpointing_steps", "4")
    args = parse(tmp_path, *every)
    accelerator = train(args, 1)[0]
    calls = []

    def logs():
        calls.append("logs")
        return {"loss": 1.0}

    def images():
        calls.append("images")
        return {"view": Image.new("RGB", (2, 2))}

    stops = [tu.finish_step(accelerator, args, step, time.time(), logs, images) for step in range(1, 7)]
    assert stops == [False] * 6 and calls == ["logs", "images", "logs", "logs", "images"]
    assert [p.name for p in tu.list_checkpoints(args.output_dir)] == ["checkpoint-4"]
    late = parse(tmp_path, *every, "--max_train_minutes", "0.5")
    assert tu.finish_step(accelerator, late, 7, time.time() - 60, logs, images)
    assert [p.name for p in tu.list_checkpoints(args.output_dir)] == ["checkpoint-4", "checkpoint-7"]


def test_card_fields_name_system_stage_and_preset(tmp_path):
    fields = tu.card_fields(parse(tmp_path, "--preset", "tiny"), "Sat2City", "dense diffusion stage")
    assert fields["title"] == "Sat2City dense diffusion stage (tiny)" and fields["preset"] == "tiny"
    assert fields["description"].startswith("Sat2City dense diffusion stage trained")


def _restart():
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def test_checkpoints_hold_no_pickle(tmp_path):
    """Every file a checkpoint holds (EMA and RNG states included) is safetensors or JSON."""
    args = parse(tmp_path, "--checkpointing_steps", "2", "--use_ema")
    train(args, steps=2)
    files = [p for p in (tmp_path / "run" / "checkpoint-2").rglob("*") if p.is_file()]
    assert {p.suffix for p in files} == {".safetensors", ".json"}
    assert {"ema_0.safetensors", "ema_0.json", "rng_state_0.safetensors", tu.CHECKPOINT_MANIFEST} <= {p.name for p in files}


class _Payload:
    """Unpickling it creates the file ``path``: stands for any code a crafted pickle runs."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


# the last: a pickle under a name no pickle loader would pick, found by its first bytes
@pytest.mark.parametrize(
    "name", ["custom_checkpoint_0.pkl", "optimizer.bin", "random_states_0.pkl", "nested/model.pt", "state.dat"]
)
def test_checkpoint_with_a_pickle_is_refused_before_loading(tmp_path, name):
    import pickle

    args = parse(tmp_path, "--checkpointing_steps", "2", "--use_ema")
    train(args, steps=2)
    crafted = tmp_path / "run" / "checkpoint-2" / name
    crafted.parent.mkdir(exist_ok=True)
    marker = tmp_path / "payload-ran"
    crafted.write_bytes(pickle.dumps(_Payload(marker)))
    _restart()
    args.resume_from_checkpoint = "latest"
    with pytest.raises(tu.CheckpointError, match=f"refusing to load {name}"):
        train(args, steps=0, start_step=2)
    assert not marker.exists()
    crafted.unlink()
    _restart()
    train(args, steps=1, start_step=2)  # the same checkpoint without the pickle resumes


def _same_size(path, data: bytes) -> None:
    """Overwrite ``path`` with ``data`` padded or cut to its size, so the manifest's sizes still match."""
    size = path.stat().st_size
    path.write_bytes((data + b" " * size)[:size])


@pytest.mark.parametrize(
    "target, problem",
    [
        ("model_0.safetensors", "model_0.safetensors unreadable: SafetensorError"),  # a pickle in disguise
        ("optimizer_0.json", "optimizer_0.json unreadable: UnicodeDecodeError"),
        (tu.CHECKPOINT_MANIFEST, "lists ../outside.json, outside the checkpoint"),
    ],
)
def test_checkpoint_with_a_file_that_does_not_parse_is_named(tmp_path, target, problem):
    """Files of the recorded sizes that are not what their names say are refused before anything
    is loaded (the crafted pickle never runs), naming the file."""
    import pickle

    args = parse(tmp_path, "--checkpointing_steps", "2")
    train(args, steps=2)
    checkpoint = tmp_path / "run" / "checkpoint-2"
    marker = tmp_path / "payload-ran"
    if target == tu.CHECKPOINT_MANIFEST:
        (tmp_path / "run" / "outside.json").write_text("{}")
        manifest = json.loads((checkpoint / target).read_text())
        manifest["files"]["../outside.json"] = 2
        (checkpoint / target).write_text(json.dumps(manifest))
    else:
        _same_size(checkpoint / target, pickle.dumps(_Payload(marker)))
    _restart()
    args.resume_from_checkpoint = "latest"
    with pytest.raises(tu.CheckpointError, match=f"checkpoint-2 is incomplete .*{problem}"):
        train(args, steps=0, start_step=2)
    assert not marker.exists()


def test_checkpoint_of_another_model_is_refused_before_loading(tmp_path):
    """A checkpoint of a wider model (another preset) is refused naming the file and the tensor;
    the model keeps its weights."""
    args = parse(tmp_path, "--checkpointing_steps", "2", "--use_ema")
    accelerator = tu.setup_accelerator(args)
    wide = TrainingUtilsToyModel(width=5)
    tu.create_ema(wide, args)
    wide, optimizer = accelerator.prepare(wide, torch.optim.SGD(wide.parameters(), lr=0.1))
    tu.save_checkpoint(accelerator, args, 2)
    _restart()
    args.resume_from_checkpoint = "latest"
    accelerator = tu.setup_accelerator(args)
    model = TrainingUtilsToyModel()
    tu.create_ema(model, args)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model, optimizer = accelerator.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(tu.CheckpointError, match=r"model_0.safetensors does not fit this run \(tensor .*: saved \[5"):
        tu.maybe_resume(accelerator, args)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


def test_a_failed_save_keeps_the_previous_checkpoint_under_the_limit(tmp_path, monkeypatch):
    """With --checkpoints_total_limit 1 the old checkpoint goes only once the new one is complete."""
    args = parse(tmp_path, "--checkpointing_steps", "2", "--checkpoints_total_limit", "1")
    train(args, steps=2)

    def disk_full(folder):
        raise OSError("No space left on device")

    monkeypatch.setattr(tu, "fsync_tree", disk_full)
    _restart()
    args.resume_from_checkpoint = "latest"
    with pytest.raises(OSError, match="No space left"):
        train(args, steps=2, start_step=2)
    monkeypatch.undo()
    assert [p.name for p in tu.list_checkpoints(tmp_path / "run")] == ["checkpoint-2"]
    tu.verify_checkpoint(tmp_path / "run" / "checkpoint-2")
    _restart()
    train(args, steps=2, start_step=2)  # resumes from it; the partial save is cleaned at start-up
    assert sorted(p.name for p in (tmp_path / "run").iterdir() if "checkpoint" in p.name) == ["checkpoint-4"]


def test_truncated_or_unfinished_checkpoint_is_named_and_the_previous_one_offered(tmp_path):
    args = parse(tmp_path, "--checkpointing_steps", "2")
    train(args, steps=4)
    run = tmp_path / "run"
    weights = run / "checkpoint-4" / "model_0.safetensors"
    size = weights.stat().st_size
    with open(weights, "r+b") as f:
        f.truncate(size // 2)
    _restart()
    args.resume_from_checkpoint = "latest"
    expected = (
        f"checkpoint-4 is incomplete (model_0.safetensors truncated: {size // 2} of {size} bytes); "
        f"resume from checkpoint-2 with --resume_from_checkpoint {run / 'checkpoint-2'}"
    )
    with pytest.raises(tu.CheckpointError) as error:
        train(args, steps=0, start_step=4)
    assert str(error.value) == expected
    (run / "checkpoint-2" / tu.CHECKPOINT_MANIFEST).unlink()  # a save that never finished
    _restart()
    args.resume_from_checkpoint = str(run / "checkpoint-2")
    with pytest.raises(tu.CheckpointError, match="checkpoint-2 is incomplete .no checkpoint.json.*start afresh"):
        train(args, steps=0, start_step=2)


def test_resume_drops_the_log_records_after_the_checkpoint(tmp_path):
    """A run killed after step 3 and resumed from step 2 logs steps 1, 2, 3 once, not 1, 2, 3, 3."""
    args = parse(tmp_path, "--checkpointing_steps", "2")
    accelerator = tu.setup_accelerator(args)
    for step in (1, 2, 3):
        tu.log_step(accelerator, args, {"loss": float(step)}, step, 0.0)
    with open(tmp_path / "run" / tu.LOG_FILE, "a") as log:
        log.write('{"step": 4, "lo')  # the half line of a killed process
    _restart()
    train(args, steps=2)
    _restart()
    args.resume_from_checkpoint = "checkpoint-2"
    accelerator, *_ = train(args, steps=0, start_step=2)
    lines = (tmp_path / "run" / tu.LOG_FILE).read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2]


def test_output_dir_of_another_run_is_refused(tmp_path):
    vae = {"script": "train_vae", "preset": "tiny"}
    args = parse(tmp_path, "--checkpointing_steps", "1")
    tu.setup_accelerator(args, run=vae)
    assert json.loads((tmp_path / "run" / tu.RUN_FILE).read_text()) == vae
    _restart()
    train(args, steps=1)
    _restart()
    with pytest.raises(ValueError, match="holds an earlier run's files .*--resume_from_checkpoint latest"):
        tu.setup_accelerator(args, run=vae)
    args.resume_from_checkpoint = "latest"
    with pytest.raises(ValueError, match=r"holds another run .*'preset': 'tiny'.*'preset': 'small'"):
        tu.setup_accelerator(args, run={**vae, "preset": "small"})
    tu.setup_accelerator(args, run=vae)  # resuming the same run


def test_setup_removes_what_interrupted_saves_left(tmp_path):
    """Temporary folders and files of our naming go; other files and moved-aside old folders
    (``atomic_folders``' ``.old``, kept for recovery) stay."""
    run = tmp_path / "run"
    for folder in (".checkpoint-7.partial", ".dense_vae.ab12_x9z.partial", ".pipeline.ab12_x9z.old"):
        (run / folder / "sub").mkdir(parents=True)
    for name in (".train_log.jsonl.ab12_x9z.tmp.jsonl", ".keep", "notes.partial"):
        (run / name).write_text("x")
    validation = run / "validation" / "step-4"
    validation.mkdir(parents=True)
    (validation / ".sample.png.ab12_x9z.tmp.png").write_text("x")
    tu.setup_accelerator(parse(tmp_path))
    assert sorted(p.name for p in run.iterdir()) == [".keep", ".pipeline.ab12_x9z.old", "notes.partial", "validation"]
    assert not any(validation.iterdir())


def test_shipped_files_need_update_shipped(tmp_path):
    shipped = tu.BUNDLED_ROOT / "sat2city" / "default"
    with pytest.raises(ValueError, match="--dest .*inside the shipped files.*--update_shipped"):
        tu.refuse_shipped_paths({"--dest": shipped, "--other": tmp_path}, update_shipped=False)
    with pytest.raises(ValueError, match="--out .*inside the shipped files"):
        tu.refuse_shipped_paths({"--out": tu.MODEL_CARDS_DIR / ".." / "x"}, update_shipped=False)
    tu.refuse_shipped_paths({"--dest": shipped}, update_shipped=True)
    tu.refuse_shipped_paths({"--dest": tmp_path / "pipe", "--unset": None}, update_shipped=False)


def test_model_card_templates_ship_in_the_wheel():
    """The templates are package data a wheel carries (as setuptools' build_py lists them), and
    render_model_card reads them from the package, not from the source checkout."""
    import importlib.resources
    import os
    import warnings
    from pathlib import Path

    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution

    root = Path(__file__).resolve().parents[1]
    dist = Distribution({"script_name": "setup.py"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cwd = os.getcwd()
        os.chdir(root)
        try:
            apply_configuration(dist, root / "pyproject.toml")
            build_py = dist.get_command_obj("build_py")
            build_py.ensure_finalized()
            wheel = {
                Path(os.path.relpath(f, build_py.build_lib)).as_posix() for f in build_py.get_outputs(include_bytecode=False)
            }
        finally:
            os.chdir(cwd)
    package = Path(str(importlib.resources.files("diffusers_city"))).resolve()
    assert tu.MODEL_CARDS_DIR.resolve().is_relative_to(package)
    for card in tu.MODEL_CARDS_DIR.glob("*.md"):
        assert f"diffusers_city/{card.resolve().relative_to(package).as_posix()}" in wheel
    assert {"template.md", "sat2city.md", "gaussiancity.md"} <= {p.name for p in tu.MODEL_CARDS_DIR.glob("*.md")}
    card = tu.render_model_card(
        parse(Path("/nonexistent")), "org/s2c", "sat2city", {"title": "T", "description": "D", "stage": "VAEs", "preset": "tiny"}
    )
    assert card.startswith("# T") and "Sat2City" in card


def test_sigterm_becomes_a_stop_request_once(tmp_path):
    """After ``setup_accelerator`` the first SIGTERM only asks to stop (``out_of_time`` says so);
    the handler then puts the previous one back; a new run starts without the request."""
    before = signal.getsignal(signal.SIGTERM)
    before = getattr(before, "previous", before)  # an earlier test's run installed one
    try:
        accelerator = tu.setup_accelerator(parse(tmp_path))
        assert not tu.stop_requested() and not tu.out_of_time(accelerator, parse(tmp_path), time.time())
        os.kill(os.getpid(), signal.SIGTERM)
        deadline = time.monotonic() + 30
        while not tu.stop_requested() and time.monotonic() < deadline:  # delivered between bytecodes
            time.sleep(0.01)
        assert tu.stop_requested() and tu.out_of_time(accelerator, parse(tmp_path), time.time())
        assert signal.getsignal(signal.SIGTERM) is before
        tu.request_stop_on_sigterm()
        assert not tu.stop_requested()
    finally:
        signal.signal(signal.SIGTERM, before)
