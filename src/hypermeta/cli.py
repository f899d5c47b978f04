"""The command line: the one list of ``hypermeta`` commands (each a plain typed function)."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import numpy as np
import torch
import typer

import hypermeta

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Meta-learning with hypernetworks (see `hypermeta COMMAND --help`).")
_state = {"debug": False}
Which = Annotated[str, typer.Option(help="Checkpoint: best or last.")]
AllowDataChange = Annotated[bool, typer.Option(
    help="Use the run even if its task data (files, class lists) changed since training.")]
F = TypeVar("F", bound=Callable[..., Any])
SetOption = Annotated[list[str] | None, typer.Option(
    "--set", help="Override: key.sub=value (repeatable).")]
RunDirOption = Annotated[Path | None, typer.Option(
    help="Run folder (default runs/<config name>).")]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"hypermeta {hypermeta.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
) -> None:
    """Meta-learning with hypernetworks."""
    _state["debug"] = debug
    logging.basicConfig(level=logging.INFO if debug else logging.WARNING)


def _friendly(command: F) -> F:
    """Bad input -> a one-line message and exit code 2 (the traceback only with --debug)."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (ValueError, TypeError, KeyError, IndexError, ArithmeticError, OSError,
                ImportError, RuntimeError, MemoryError) as err:
            if _state["debug"]:
                raise
            lines = [line.strip() for line in str(err).strip("'\"").splitlines() if line.strip()]
            message = "; ".join(lines).replace(":;", ":")
            typer.echo(f"error: {message}", err=True)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def _is_rl_config(path: Path) -> bool:
    import yaml

    try:
        data = yaml.safe_load(path.read_text()) if path.is_file() else None
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return False  # RunConfig.from_file reports it
    return isinstance(data, dict) and "env" in data


def _is_continual_config(path: Path) -> bool:
    from hypermeta.continual.run import is_continual_config

    return is_continual_config(path)


def _train_continual(config: Path, overrides: list[str], run_dir: Path, max_steps: int | None,
                     max_minutes: float | None, progress: bool) -> None:
    """``hypermeta train`` on a config with a ``continual:`` section: tasks one after another,
    checkpointed after each (a rerun resumes at the next)."""
    from hypermeta.continual.run import ContinualConfig, train_continual

    if max_steps is not None:
        raise ValueError("--max-steps does not apply to a continual run (it checkpoints after "
                         "each task): use --max-minutes")
    cfg = ContinualConfig.from_file(config, overrides)
    result = train_continual(cfg, run_dir, progress=progress,
                             max_seconds=None if max_minutes is None else 60 * max_minutes)
    typer.echo(json.dumps({"run_dir": str(run_dir), "tasks_done": result.tasks_done,
                           "complete": result.complete, "acc": result.acc, "bwt": result.bwt,
                           "task_inference": result.inferred}))


@app.command()
@_friendly
def train(
    config: Annotated[Path, typer.Argument(help="YAML run config (see configs/).")],
    set_: SetOption = None,
    out: RunDirOption = None,
    max_steps: Annotated[int | None, typer.Option(help="Stop after this many steps in this "
                                                  "call; rerun to resume.")] = None,
    max_minutes: Annotated[float | None, typer.Option(help="Stop at the first step past this "
                                                      "many minutes (checkpointed); rerun to "
                                                      "resume.")] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    threads: Annotated[int | None, typer.Option(help="torch threads for this run (same as "
                                                "--set threads=N; see README).")] = None,
) -> None:
    """Meta-train a hypernetwork or a baseline; resumes an interrupted run in the same folder."""
    from hypermeta.config import RunConfig
    from hypermeta.progress import ProgressBar
    from hypermeta.train import fit

    if max_steps is not None and max_steps < 0:
        raise ValueError(f"--max-steps must be >= 0, got {max_steps}")
    overrides = [*(set_ or []), *([f"threads={threads}"] if threads is not None else [])]
    if _is_rl_config(config):
        raise ValueError(f"{config} is an RL config (it has an env: section): run "
                         f"`hypermeta rl train {config}`")
    if max_minutes is not None and not max_minutes > 0:
        raise ValueError(f"--max-minutes must be > 0, got {max_minutes}")
    run_dir = out or Path("runs") / config.stem
    if _is_continual_config(config):
        _train_continual(config, overrides, run_dir, max_steps, max_minutes, progress)
        return
    run_config = RunConfig.from_file(config, overrides)
    result = fit(run_config, run_dir, max_steps=max_steps,
                 max_seconds=None if max_minutes is None else 60 * max_minutes,
                 callbacks=[ProgressBar()] if progress else [])
    # under torchrun: one report, from rank 0 (read from the environment: fit has left its
    # process group, and joining another here would be a second rendezvous)
    if os.environ.get("RANK", "0") == "0":
        typer.echo(json.dumps({"run_dir": str(run_dir), "steps_done": result.steps_done,
                               "complete": result.complete, "best_val": result.best_val,
                               "best_step": result.best_step,
                               "content_id": result.content_id}))


@app.command("eval")
@_friendly
def eval_(
    run_dir: Annotated[Path, typer.Argument(help="A run folder made by `hypermeta train`.")],
    tasks: Annotated[int | None, typer.Option(help="Number of test tasks (default: the "
                                              "family's fixed test set).")] = None,
    finetune_steps: Annotated[int | None, typer.Option(help="Fine-tuning steps of generated "
                                                       "networks (hypernet runs).")] = None,
    which: Which = "best",
    split: Annotated[str, typer.Option(help="test or val.")] = "test",
    allow_data_change: AllowDataChange = False,
    episodes_from: Annotated[Path | None, typer.Option(
        "--episodes", help="Your own fixed episodes instead (Omniglot runs): a folder of "
                           "episode folders (support/<class>/*.png, query/<class>/*.png) or a "
                           "JSON list; images preprocessed as the shipped data.")] = None,
) -> None:
    """Evaluate on the fixed test tasks (or on --episodes files): mean ± 95% CI, written to
    RUN_DIR/eval-*.json."""
    from hypermeta.evaluate import evaluate, predictor
    from hypermeta.files import atomic_write_json
    from hypermeta.model import HyperModel
    from hypermeta.runs import load_run

    if split not in ("test", "val"):
        raise ValueError(f"--split must be 'test' or 'val', got {split!r}")
    if tasks is not None and tasks < 1:
        raise ValueError(f"--tasks must be >= 1, got {tasks}")
    if finetune_steps is not None and finetune_steps < 0:
        raise ValueError(f"--finetune-steps must be >= 0, got {finetune_steps}")
    run = load_run(run_dir, which=which, allow_data_change=allow_data_change)
    learner, config, source, cid = run.learner, run.config, run.tasks, run.content_id
    if episodes_from is not None:
        from hypermeta.tasks.omniglot import omniglot_episodes

        if config.tasks.name != "omniglot":
            raise ValueError(f"--episodes reads image episodes for omniglot runs; this run's "
                             f"tasks are {config.tasks.name!r}")
        episodes = omniglot_episodes(episodes_from,
                                     binarize=bool(config.tasks.kwargs().get("binarize")))
        split = "files"
    else:
        episodes = source.fixed_tasks(split, tasks or config.eval.tasks)  # type: ignore[arg-type]
    if finetune_steps is not None and not isinstance(learner, HyperModel):
        raise ValueError("--finetune-steps applies to hypernet runs only")
    metric = source.kind.metric
    steps = learner.finetune_steps if isinstance(learner, HyperModel) else 0
    steps = steps if finetune_steps is None else finetune_steps
    # a hypernet with fine-tuning is reported before and after it
    variants = {"generated": 0, "finetuned": steps} if steps else {"": None}
    payload: dict[str, Any] = {"run_dir": str(run_dir), "checkpoint": which, "content_id": cid,
                               "split": split, "metric": metric, "finetune_steps": steps,
                               "provenance": run.provenance,
                               **({"episodes": str(episodes_from)} if episodes_from else {})}
    for name, variant_steps in variants.items():
        predict = predictor(learner)
        if variant_steps is not None:
            assert isinstance(learner, HyperModel)
            predict = functools.partial(learner.predict, finetune_steps=variant_steps)
        result = evaluate(predict, episodes, source.kind, batch=config.eval.batch)
        payload[name or "result"] = result
        label = f"{name} " if name else ""
        typer.echo(f"{label}{metric} {result['mean']:.4f} ± {result['ci95']:.4f} (95% CI, "
                   f"{result['tasks']} {split} tasks)")
    suffix = "" if finetune_steps is None else f"-ft{finetune_steps}"
    atomic_write_json(Path(run_dir) / f"eval-{split}-{which}{suffix}.json", payload)


SupportOption = Annotated[Path | None, typer.Option(
    help=".npz with arrays x [S, ...] and y [S] or [S, out] (one task's support set), or .json "
         "with x and y in the request format (texts for text tasks, base64 WAVs for audio) "
         "and/or descriptions (one per class, for a class head that reads them); for audio "
         "tasks also a folder of class folders of .wav files.")]
DescriptorOption = Annotated[str | None, typer.Option(
    help="Task id, comma-separated feature vector, label or text.")]


def _json_task(path: Path, source: Any) -> Any:
    """A task file in the server's request format: ``{"x": [...], "y": [...]}`` and/or
    ``{"descriptions": [...]}`` -> one task's episode."""
    from hypermeta.registry import INPUT_DECODERS
    from hypermeta.tasks.inputs import decode_labels

    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"--support {path} is not JSON ({err})") from None
    if not isinstance(data, dict) or not ({"x", "y", "descriptions"} & set(data)):
        raise ValueError(f"--support {path} must be a JSON object with x and y and/or "
                         "descriptions")
    decode = INPUT_DECODERS.get(source.input_format).decode
    support = None
    if "x" in data or "y" in data:
        support = source.support_episode(decode(data.get("x"), source, "x"),
                                         decode_labels(data.get("y"), source, "y"))
    if data.get("descriptions") is None:
        return support
    return source.described_episode(decode(data["descriptions"], source, "descriptions"),
                                    support)


def _task_network(run_dir: Path, support: Path | None, descriptor: str | None, which: str,
                  allow_data_change: bool) -> tuple[Any, Any, torch.Tensor, Any]:
    """One task's generated network from a run: (network, the loaded run, an example input
    batch for export, the task's episode)."""
    from hypermeta.runs import load_hypermodel

    if (support is None) == (descriptor is None):
        raise ValueError("pass exactly one of --support FILE or --descriptor VALUE")
    run = load_hypermodel(run_dir, which=which, allow_data_change=allow_data_change)
    model, source = run.hypermodel, run.tasks
    if support is not None:
        front_end = getattr(source, "front_end", None)
        if support.is_dir() and front_end is not None:  # audio: folder/<class>/*.wav
            from hypermeta.audio import wav_folder

            x, y, classes = wav_folder(support, front_end)
            typer.echo("labels: " + ", ".join(f"{i} = {c}" for i, c in enumerate(classes)))
            episode = source.support_episode(x, y)
        elif not support.is_file():
            raise FileNotFoundError(f"--support file {support} does not exist")
        elif support.suffix == ".json":
            episode = _json_task(support, source)
        else:
            with np.load(support, allow_pickle=False) as data:
                if "x" not in data or "y" not in data:
                    raise ValueError(f"--support {support} must hold arrays 'x' and 'y'")
                episode = source.support_episode(torch.as_tensor(data["x"]),
                                                 torch.as_tensor(data["y"]))
    else:
        assert descriptor is not None
        parse = getattr(model.encoder, "parse_descriptor", None)
        if parse is None:
            raise ValueError(f"this model's encoder ({type(model.encoder).__name__}) takes no "
                             "descriptor")
        episode = source.descriptor_episode(parse(descriptor))
    network = model.generate(episode)[0]
    example = source.fixed_tasks("val", 1).query_x[0]  # (Q, ...) one batch of real inputs
    return network, run, example, episode


@app.command()
@_friendly
def generate(
    run_dir: Annotated[Path, typer.Argument(help="A hypernet run folder.")],
    out: Annotated[Path, typer.Option(help="Where to write the task's network (.safetensors).")],
    support: SupportOption = None,
    descriptor: DescriptorOption = None,
    which: Which = "best",
    allow_data_change: AllowDataChange = False,
) -> None:
    """Generate one task's standalone network (safetensors + architecture JSON); for an RL
    run, one context's policy (--descriptor CONTEXT)."""
    from hypermeta.export import export_network
    from hypermeta.rl.run import is_rl_run

    if is_rl_run(run_dir):
        _rl_policy(run_dir, descriptor, out, "safetensors")
        return

    network, run, example, _ = _task_network(run_dir, support, descriptor, which,
                                             allow_data_change)
    config = run.config
    export_network(network, out, "safetensors", example=example,
                   architecture=getattr(network, "config", config.target.model_dump()),
                   content_id=run.content_id)
    count = sum(p.numel() for p in network.parameters())
    typer.echo(f"wrote {out} ({count} parameters; architecture {config.target.name})")


@app.command("export")
@_friendly
def export(
    run_dir: Annotated[Path, typer.Argument(help="A hypernet run folder.")],
    out: Annotated[Path, typer.Option(help="Output file.")],
    fmt: Annotated[str, typer.Option("--format", help="safetensors, pt2, onnx, or text (a "
                                     "folder: raw text in; safetensors + ONNX + tokenizer, "
                                     "and a PEFT adapter for generated LoRA).")] = "onnx",
    support: SupportOption = None,
    descriptor: DescriptorOption = None,
    hypernet: Annotated[bool, typer.Option("--hypernet", help="Export the generator itself "
                                           "(encoder + hypernetwork) to ONNX instead.")] = False,
    which: Which = "best",
    allow_data_change: AllowDataChange = False,
) -> None:
    """Export one task's generated network (or, with --hypernet, the generator) to a model
    that loads without hypermeta."""
    from hypermeta.export import FORMATS, export_generator, export_network, generator_example
    from hypermeta.rl.run import is_rl_run
    from hypermeta.runs import load_hypermodel

    if is_rl_run(run_dir) and not hypernet:
        _rl_policy(run_dir, descriptor, out, fmt)
        return

    if fmt not in (*FORMATS, "text"):
        raise ValueError(f"--format must be one of {[*FORMATS, 'text']}, got {fmt!r}")
    if hypernet:
        if fmt != "onnx":
            raise ValueError("--hypernet exports to ONNX only (--format onnx)")
        run = load_hypermodel(run_dir, which=which, allow_data_change=allow_data_change)
        model, source = run.hypermodel, run.tasks
        export_generator(model, out, generator_example(model, source))
        typer.echo(f"wrote {out} (generator: {model.target.spec.numel()} parameters per task)")
        return
    network, run, example, episode = _task_network(run_dir, support, descriptor, which,
                                                   allow_data_change)
    model, config, cid, source = run.hypermodel, run.config, run.content_id, run.tasks
    if fmt == "text":
        from hypermeta.export_text import export_text_classifier

        names = [n for n in model.target.spec.names if n.endswith((".lora_a", ".lora_b"))]
        lora = None
        if names:
            params = model.adapted_params(episode)
            lora = (names, {n: params[n][0] for n in names}, config.rank)
        export_text_classifier(network, source, out, content_id=cid, lora=lora)
        typer.echo(f"wrote {out}/ (text classifier{', PEFT adapter' if lora else ''})")
        return
    front_end = getattr(source, "front_end", None)
    if front_end is not None and fmt != "safetensors":  # audio: waveform in, logits out
        from hypermeta.audio import WaveformModel

        network = WaveformModel(front_end, network)
        example = 0.1 * torch.randn(2, front_end.samples,
                                    generator=torch.Generator().manual_seed(0))
    export_network(network, out, fmt, example=example,  # type: ignore[arg-type]
                   architecture=getattr(network, "config", config.target.model_dump()),
                   content_id=cid)
    if front_end is not None and fmt != "safetensors":
        typer.echo(f"input: waveforms [N, {front_end.samples}] float32 in [-1, 1] at "
                   f"{front_end.sample_rate} Hz (the first {front_end.seconds:g} s, "
                   "zero-padded); output: logits")
    typer.echo(f"wrote {out} ({fmt})")


@app.command()
@_friendly
def serve(
    run_dir: Annotated[Path, typer.Argument(help="A hypernet run folder.")],
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    state_dir: Annotated[Path | None, typer.Option(help="Folder of the task database "
                                                   "(default RUN_DIR/serve-state).")] = None,
    store_url: Annotated[str | None, typer.Option(
        help="The task database as a URL instead of --state-dir: sqlite:///tasks.db "
             "(relative) or sqlite:////abs/tasks.db; servers on one machine may share it.")
    ] = None,
    cache_size: Annotated[int, typer.Option(help="Generated networks kept in memory.")] = 128,
    max_body_bytes: Annotated[int, typer.Option(help="Larger bodies get 413.")] = 1_000_000,
    max_rows: Annotated[int, typer.Option(help="Most rows per support set or batch.")] = 10_000,
    max_abs_value: Annotated[float, typer.Option(
        help="Largest magnitude of a numeric request value (422 beyond).")] = 1e6,
    token: Annotated[str | None, typer.Option(envvar="HYPERMETA_TOKEN",
                                              help="Bearer token required on every route but "
                                              "/healthz (or set HYPERMETA_TOKEN).")] = None,
    allow_remote_without_token: Annotated[bool, typer.Option(
        help="Bind a non-loopback interface without a token (not recommended).")] = False,
    allow_data_change: AllowDataChange = False,
    workers: Annotated[int, typer.Option(help="Worker processes sharing the task store (each "
                                         "with its own cache).")] = 1,
) -> None:
    """Serve task registration and prediction over HTTP (FastAPI + uvicorn)."""
    import ipaddress

    if token is not None and not token.strip():
        raise ValueError("--token (or HYPERMETA_TOKEN) is empty or blank; pass a real token")
    loopback = host == "localhost"
    with contextlib.suppress(ValueError):  # a host name rather than an address
        loopback = loopback or ipaddress.ip_address(host).is_loopback
    if not loopback and token is None and not allow_remote_without_token:
        raise ValueError(f"refusing to serve on {host} without --token (or HYPERMETA_TOKEN); "
                         "bind 127.0.0.1 or pass --allow-remote-without-token")
    try:
        import uvicorn
    except ImportError:
        raise ImportError("serving needs the 'serve' extra: pip install 'hypermeta[serve]'") \
            from None
    from hypermeta.serve import create_app

    if min(cache_size, max_body_bytes, max_rows, workers) < 1 or not 0 < port < 65536:
        raise ValueError("--cache-size, --max-body-bytes, --max-rows and --workers must be >= 1 "
                         "and --port in 1..65535")
    settings = {"run_dir": str(run_dir), "state_dir": None if state_dir is None else
                str(state_dir), "store_url": store_url, "cache_size": cache_size,
                "max_body_bytes": max_body_bytes,
                "max_rows": max_rows, "token": token, "allow_data_change": allow_data_change,
                "max_abs_value": max_abs_value}
    api = create_app(**settings)  # type: ignore[arg-type]  # checks the run once, here
    if workers == 1:
        uvicorn.run(api, host=host, port=port, log_level="warning")
        return

    from hypermeta.serve.app import SETTINGS_ENV

    os.environ[SETTINGS_ENV] = json.dumps(settings)  # read by each worker's app factory
    _serve_workers(host, port, workers)


def _serve_workers(host: str, port: int, workers: int) -> None:
    """uvicorn's multiprocess supervisor over a listening socket made here. uvicorn's own
    (``uvicorn.run(workers=N)``) leaves the socket's protocol at 0, so asyncio never sets
    TCP_NODELAY on accepted connections and every keep-alive request after the first waits
    ~40 ms for a delayed ACK (uvicorn issue #3149); this socket says IPPROTO_TCP."""
    import socket

    import uvicorn
    from uvicorn.supervisors import Multiprocess

    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(address)
    sock.set_inheritable(True)
    config = uvicorn.Config("hypermeta.serve.app:app_from_env", factory=True, host=host,
                            port=port, workers=workers, log_level="warning")
    Multiprocess(config, sockets=[sock]).run()


@app.command("inspect")
@_friendly
def inspect_run(
    run_dir: Annotated[Path, typer.Argument(help="A run folder.")],
    out: Annotated[Path | None, typer.Option(help="Folder for report.html (default "
                                             "RUN_DIR/report).")] = None,
    tasks: Annotated[int, typer.Option(help="Test tasks for the map and statistics.")] = 200,
    which: Annotated[str, typer.Option(help="Checkpoint: best or last.")] = "best",
    colour_by: Annotated[list[str] | None, typer.Option(
        "--colour-by", help="Task property to colour the map by (repeatable; default: all "
                            "the family declares).")] = None,
) -> None:
    """Write a self-contained HTML report of a trained run (curves, task map, weight
    statistics, interpolation, fusion, support influence) and print its path."""
    from hypermeta.report import write_report

    typer.echo(str(write_report(run_dir, out, tasks=tasks, which=which, colour_by=colour_by)))


data_app = typer.Typer(no_args_is_help=True, help="Build datasets from their original release.")
app.add_typer(data_app, name="data")


@data_app.command("prepare")
@_friendly
def data_prepare(
    dataset: Annotated[str, typer.Argument(help="Registered data source (see `hypermeta "
                                           "names`), e.g. omniglot.")],
    source: Annotated[Path, typer.Argument(help="Folder with the original release.")],
    out: Annotated[Path, typer.Argument(help="Output path.")],
    option: Annotated[list[str] | None, typer.Option(
        "--option", help="Source option KEY=VALUE (repeatable), e.g. size=105.")] = None,
) -> None:
    """Build a dataset from its original files (omniglot: the same npz as the shipped one)."""
    from hypermeta.config import apply_overrides, signature_model
    from hypermeta.registry import DATA_SOURCES

    prepare = DATA_SOURCES.get(dataset)
    options = apply_overrides({}, option or [])
    try:
        checked = signature_model(prepare).model_validate(
            {"source": str(source), "out": str(out), **options})
    except Exception as err:
        raise ValueError(f"data prepare {dataset}: {err}") from None
    path = prepare(**checked.model_dump())
    typer.echo(f"wrote {path}")


rl_app = typer.Typer(no_args_is_help=True, help="Reinforcement learning: policies generated "
                     "from an environment's context (needs the rl extra).")
app.add_typer(rl_app, name="rl")
ContextOption = Annotated[str, typer.Option(
    "--context", help="Raw context: comma-separated numbers in the family's order (cartpole: "
                      "length,masspole,force_mag; pendulum: m,l,g) or a game name.")]


@rl_app.command("train")
@_friendly
def rl_train(
    config: Annotated[Path, typer.Argument(help="YAML RL config (configs/rl-*.yaml).")],
    set_: SetOption = None,
    out: RunDirOption = None,
    max_steps: Annotated[int | None, typer.Option(help="Stop after about this many env steps "
                                                  "in this call; rerun to resume.")] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = False,
) -> None:
    """Train a generated (or concat / context-blind) policy with PPO; resumes in the same
    folder."""
    from hypermeta.rl.run import RLConfig, train_rl

    if max_steps is not None and max_steps < 1:
        raise ValueError(f"--max-steps must be >= 1, got {max_steps}")
    run_config = RLConfig.from_file(config, set_ or [])
    run_dir = out or Path("runs") / config.stem
    result = train_rl(run_config, run_dir, max_steps=max_steps, progress=progress)
    typer.echo(json.dumps({"run_dir": str(run_dir), "steps_done": result.steps_done,
                           "complete": result.complete,
                           "episode_return": result.episode_return}))


@rl_app.command("eval")
@_friendly
def rl_eval(
    run_dir: Annotated[Path, typer.Argument(help="A run folder made by `hypermeta rl train`.")],
    contexts: Annotated[str, typer.Option(help="interp, extrap (physics families) or games."
                                          )] = "interp",
    count: Annotated[int | None, typer.Option(help="Number of test contexts (default: "
                                              "the config's eval.contexts).")] = None,
    episodes: Annotated[int | None, typer.Option(help="Episodes per context.")] = None,
) -> None:
    """Mean return per fixed test context (deterministic actions); the mean over contexts
    ± 95% CI; written to RUN_DIR/eval-rl-<contexts>.json."""
    from hypermeta.evaluate import summarize
    from hypermeta.files import atomic_write_json
    from hypermeta.rl.run import evaluate_rl, fixed_contexts, load_rl_run

    for name, value in (("--count", count), ("--episodes", episodes)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    run = load_rl_run(run_dir)
    chosen = fixed_contexts(run.config, contexts, count)
    returns = evaluate_rl(run, chosen, episodes=episodes)
    result = summarize(torch.tensor(returns, dtype=torch.float64))
    atomic_write_json(run_dir / f"eval-rl-{contexts}.json", {
        "run_dir": str(run_dir), "content_id": run.content_id, "steps": run.steps,
        "contexts": [c if isinstance(c, str) else [float(v) for v in c] for c in chosen],
        "returns": returns, "result": result})
    typer.echo(f"return {result['mean']:.2f} ± {result['ci95']:.2f} (95% CI over "
               f"{len(chosen)} {contexts} contexts, {episodes or run.config.eval.episodes} "
               "episodes each)")


def _rl_policy(run_dir: Path, context: str | None, out: Path, fmt: str) -> None:
    from hypermeta.rl.run import export_policy, load_rl_run

    if context is None:
        raise ValueError("an RL run needs --context (or --descriptor): the environment's "
                         "parameters or a game name")
    path = export_policy(load_rl_run(run_dir), context, out, fmt)
    typer.echo(f"wrote {path} ({fmt} policy: flat observation -> action output)")


@rl_app.command("generate")
@_friendly
def rl_generate(
    run_dir: Annotated[Path, typer.Argument(help="An RL run folder.")],
    context: ContextOption,
    out: Annotated[Path, typer.Option(help="Output file.")],
    fmt: Annotated[str, typer.Option("--format", help="safetensors, pt2 or onnx.")]
    = "safetensors",
) -> None:
    """Write one context's policy as a plain network (also `hypermeta generate/export RUN_DIR
    --descriptor CONTEXT`)."""
    _rl_policy(run_dir, context, out, fmt)


@rl_app.command("strip")
@_friendly
def rl_strip(
    run_dir: Annotated[Path, typer.Argument(help="A cartpole or pendulum run folder.")],
    out: Annotated[Path, typer.Option(help="PNG file.")],
    context: Annotated[list[str] | None, typer.Option(
        "--context", help="Raw context (repeatable; default: the default physics, one "
                          "interpolation and one extrapolation context).")] = None,
    frames: Annotated[int, typer.Option(help="Frames per context.")] = 6,
) -> None:
    """A PNG strip of one rollout per context (matplotlib drawings of the physics state)."""
    from hypermeta.rl.render import rollout_strip
    from hypermeta.rl.run import load_rl_run

    typer.echo(f"wrote {rollout_strip(load_rl_run(run_dir), out, context, frames=frames)}")


@app.command()
def networks() -> None:
    """List the registered target networks and the config fields each takes."""
    from hypermeta.config import signature_model
    from hypermeta.registry import TARGETS

    for name in TARGETS.names():
        fields = signature_model(TARGETS.get(name)).model_fields
        described = ", ".join(f"{k}" + ("" if f.is_required() else f"={f.default!r}")
                              for k, f in fields.items())
        typer.echo(f"{name:12s} {described}")


@app.command()
def names() -> None:
    """List every registry (targets, hypernets, encoders, task families, kinds, methods, data
    sources, input decoders) and its registered names."""
    import hypermeta.config  # noqa: F401  (registers the built-ins)
    from hypermeta import registry

    for attr in ("TARGETS", "HYPERNETS", "ENCODERS", "TASK_FAMILIES", "TASK_KINDS", "METHODS",
                 "DATA_SOURCES", "INPUT_DECODERS"):
        table = getattr(registry, attr)
        typer.echo(f"{table.what + 's':16s} {', '.join(table.names())}")


def main() -> None:
    app(prog_name="hypermeta")


if __name__ == "__main__":
    main()
