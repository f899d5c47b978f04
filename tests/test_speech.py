"""Speech: the log-mel front end against independent references, strict WAV decoding,
resampling, DTW, the espeak-ng word set and FSDD loaders, a generated GRU over audio episodes
(batched = per task, gradients, any way count), serving WAVs (JSON and multipart) and the
waveform-in ONNX export."""

from __future__ import annotations

import base64
import io
import json
import math
import os
import shutil
import wave
from pathlib import Path

import numpy as np
import pytest
import torch

from hypermeta import RunConfig, fit
from hypermeta.audio import (
    FrontEndConfig,
    LogMel,
    WaveformModel,
    features,
    fit_length,
    mel_filterbank,
    read_wav,
    resample,
    write_wav,
)
from hypermeta.baselines import DTWNearest, dtw_distances
from hypermeta.episodes import Episode
from hypermeta.registry import INPUT_DECODERS
from hypermeta.tasks.speech import (
    DIGITS,
    FSDDTasks,
    SpeechTasks,
    fsdd_tasks,
    prepare_spoken_words,
    spoken_words_tasks,
    word_lists,
)

RATE = 8000
DATA = os.environ.get("HYPERMETA_DATA")
HAS_FSDD = DATA is not None and (Path(DATA) / "fsdd" / "recordings").is_dir()
HAS_ESPEAK = shutil.which("espeak-ng") is not None


def tone(freq: float, seconds: float = 0.5, rate: int = RATE, amp: float = 0.5) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (amp * np.sin(2 * math.pi * freq * t)).astype(np.float32)


def chirp(f0: float, f1: float, seconds: float = 0.5, rate: int = RATE) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    phase = 2 * math.pi * (f0 * t + (f1 - f0) * t**2 / (2 * seconds))
    return (0.5 * np.sin(phase)).astype(np.float32)


# ----------------------------------------------------------------------------- front end
def test_log_mel_power_equals_torch_stft() -> None:
    module = LogMel(normalize=False)
    wav = torch.randn(3, 6400)
    reference = torch.stft(wav, 256, 160, window=torch.hann_window(256), center=True,
                           pad_mode="reflect", return_complex=True).abs() ** 2
    ours = module.power(wav)
    assert ours.shape == reference.shape == (3, 129, 41)
    assert torch.allclose(ours, reference, rtol=1e-4, atol=1e-3 * reference.max().item())


def test_filterbank_follows_the_htk_mel_formula_on_known_tones() -> None:
    # centres computed here from the formula, independently of hypermeta.audio
    def mel(f: float) -> float:
        return 2595 * math.log10(1 + f / 700)

    low, high = mel(20.0), mel(4000.0)
    centres = [700 * (10 ** ((low + (high - low) * (i + 1) / 33) / 2595) - 1) for i in range(32)]
    module = LogMel(normalize=False)
    for freq in (150.0, 440.0, 1000.0, 2500.0, 3500.0):
        energy = module(torch.from_numpy(tone(freq, 0.8))[None])[0].mean(0)  # (mels,)
        nearest = min(range(32), key=lambda i: abs(centres[i] - freq))
        assert abs(int(energy.argmax()) - nearest) <= 1, freq
    bank = mel_filterbank(256, 32, RATE, 20.0)
    assert bank.shape == (129, 32) and float(bank.max()) <= 1.0 + 1e-6
    assert (bank.sum(0) > 0).all()  # no empty band


def test_front_end_normalises_each_utterance_and_batches_equal_singles() -> None:
    front = FrontEndConfig()
    waves = np.stack([fit_length(chirp(300, 3000), front.samples),
                      fit_length(0.01 * tone(700), front.samples)])
    batch = features(front, waves)
    assert batch.shape == (2, front.frames, front.n_mels)
    for i in range(2):
        assert abs(float(batch[i].mean())) < 1e-4 and abs(float(batch[i].std()) - 1) < 1e-3
        assert torch.allclose(features(front, waves[i:i + 1])[0], batch[i], atol=1e-5)
    # loudness does not change normalised features (of a clip with energy in every band)
    noise = np.random.default_rng(0).standard_normal((1, front.samples)).astype(np.float32)
    assert torch.allclose(features(front, 0.05 * noise), features(front, 0.5 * noise),
                          atol=1e-3)


def test_resample_keeps_the_tone_and_removes_what_would_alias() -> None:
    kept = resample(tone(440, 1.0, 16000), 16000, RATE)
    assert len(kept) == RATE
    spectrum = np.abs(np.fft.rfft(kept))
    assert abs(int(spectrum.argmax()) - 440) <= 1  # 1 Hz bins over 1 s
    gone = resample(tone(6000, 1.0, 16000), 16000, RATE)  # above the new Nyquist (4 kHz)
    assert float(np.abs(gone).max()) < 1e-3  # not folded to 2 kHz


# ----------------------------------------------------------------------------- WAV decoding
def wav_bytes(data: np.ndarray, *, rate: int = RATE, channels: int = 1, width: int = 2) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as writer:
        writer.setnchannels(channels)
        writer.setsampwidth(width)
        writer.setframerate(rate)
        if width == 2:
            pcm = np.round(np.clip(data, -1, 1) * 32767).astype("<i2")
            frames = np.repeat(pcm, channels).tobytes()
        else:
            frames = (np.clip(data, -1, 1) * 127 + 128).astype(np.uint8).tobytes()
        writer.writeframes(frames)
    return buffer.getvalue()


def test_read_wav_round_trips_and_resamples() -> None:
    clip = tone(300)
    back = read_wav(write_wav(clip))
    assert np.allclose(back, clip, atol=1e-4)
    up = read_wav(wav_bytes(tone(300, rate=16000), rate=16000))
    assert len(up) == len(clip)


@pytest.mark.parametrize(("data", "message"), [
    (b"", "not a readable WAV"),
    (b"RIFF....WAVEfmt not really", "not a readable WAV"),
    (b"hello world, not audio at all", "not a readable WAV"),
    (wav_bytes(np.zeros(0, np.float32)), "empty"),
    (wav_bytes(np.zeros(4000, np.float32)), "silent"),
    (wav_bytes(tone(300), channels=2), "2 channels"),
    (wav_bytes(tone(300), width=1), "8-bit"),
    (wav_bytes(tone(300, seconds=11.0)), "limit is 10"),
])
def test_read_wav_refuses_bad_audio_with_a_clear_error(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        read_wav(data, what="clip")


def test_audio_input_format_names_the_bad_row() -> None:
    source = type("Source", (), {"name": "s", "front_end": FrontEndConfig()})()
    decode = INPUT_DECODERS.get("audio").decode
    good = base64.b64encode(write_wav(tone(500))).decode()
    x = decode([good, good], source, "x")
    assert x.shape == (2, 41, 32) and torch.isfinite(x).all()
    for values, message in (([good, 3], r"x\[1\] must be a base64"),
                            ([good, "%%%not base64"], r"x\[1\] is not valid base64"),
                            ([base64.b64encode(b"not a wav").decode()], r"x\[0\] is not a "),
                            ([], "x is empty"),
                            ("a string", "JSON array")):
        with pytest.raises(ValueError, match=message):
            decode(values, source, "x")


# ----------------------------------------------------------------------------- DTW
def test_dtw_matches_a_direct_implementation_and_ignores_time_warps() -> None:
    a, b = torch.randn(3, 7, 4), torch.randn(2, 5, 4)

    def direct(x: np.ndarray, y: np.ndarray) -> float:
        table = np.full((len(x) + 1, len(y) + 1), np.inf)
        table[0, 0] = 0
        for i in range(len(x)):
            for j in range(len(y)):
                table[i + 1, j + 1] = np.linalg.norm(x[i] - y[j]) + min(
                    table[i, j], table[i + 1, j], table[i, j + 1])
        return float(table[-1, -1] / (len(x) + len(y)))

    ours = dtw_distances(a, b)
    for i in range(3):
        for j in range(2):
            assert abs(float(ours[i, j]) - direct(a[i].numpy(), b[j].numpy())) < 1e-5
    # a slowed-down copy (every frame twice) is at distance zero
    slow = a[:1].repeat_interleave(2, dim=1)
    assert float(dtw_distances(a[:1], slow)[0, 0]) < 1e-6
    # template matching: queries are time-warped copies of their class's support example
    support = torch.randn(1, 3, 6, 4)
    query = support[:, [2, 0, 1]].repeat_interleave(2, dim=2)
    episode = Episode(support, torch.tensor([[0, 1, 2]]), query, torch.tensor([[2, 0, 1]]))
    assert DTWNearest().predict(episode).argmax(-1).tolist() == [[2, 0, 1]]


# ----------------------------------------------------------------------------- tasks
def tone_tasks(ways: int = 2, shots: int = 1, queries: int = 2,
               classes: dict[str, list[int]] | None = None) -> SpeechTasks:
    """Ten classes of synthetic chirps (class c sweeps from 200 + 300c Hz), 8 clips each with
    random pitch offsets and noise; inputs are the front end's features."""
    front = FrontEndConfig()
    rng = np.random.default_rng(0)
    waves, labels = [], []
    for c in range(10):
        for _ in range(8):
            start = 200 + 300 * c + rng.uniform(-30, 30)
            clip = chirp(start, start * 1.5, seconds=rng.uniform(0.3, 0.6))
            waves.append(fit_length(clip + 0.01 * rng.standard_normal(len(clip)), front.samples))
            labels.append(c)
    source = SpeechTasks(features(front, np.stack(waves)), np.array(labels), ways=ways,
                         shots=shots, queries=queries,
                         classes=classes or {"train": [0, 1, 2, 3, 4, 5], "val": [6, 7],
                                             "test": [8, 9]},
                         name="tones")
    source.front_end = front
    return source


def gru_model(source: SpeechTasks) -> torch.nn.Module:
    from hypermeta.runs import build_learner

    config = RunConfig.from_file(Path(__file__).resolve().parents[1] / "configs"
                                 / "speech_hypernet.yaml",
                                 ["target.hidden=16", "encoder.hidden=32", "encoder.dim=8",
                                  "hypernet.hidden=[16]", "class_head.hidden=16"])
    torch.manual_seed(0)
    return build_learner(config, source)


def test_generated_gru_batches_equal_single_tasks_and_gradients_reach_the_generator() -> None:
    source = tone_tasks()
    model = gru_model(source)
    episode = source.sample("train", 3, torch.Generator().manual_seed(1))
    together = model.predict(episode)
    for t in range(3):
        alone = model.predict(episode.task(t))
        assert torch.allclose(together[t], alone[0], atol=1e-5)
    # the generator's last layer starts at zero (FiLM = identity): after one step on it,
    # gradients flow through the whole generator
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(2):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(episode).flatten(0, 1),
                                                 episode.query_y.flatten())
        loss.backward()
        optimizer.step()
    for part in (model.encoder, model.hypernet):
        grads = [p.grad for p in part.parameters() if p.requires_grad]
        assert grads and all(g is not None for g in grads)
        assert sum(float(g.abs().sum()) for g in grads) > 0
    # FiLM of the GRU's input gates is generated: different support sets, different weights
    params = model.params(episode)
    assert set(params) >= {"input_map.film_scale", "input_map.film_shift"}
    assert not torch.allclose(params["input_map.film_scale"][0],
                              params["input_map.film_scale"][1])


def test_label_free_set_encoder_reads_more_ways_than_it_was_built_for() -> None:
    source = tone_tasks(ways=2)
    model = gru_model(source)  # built for 2-way episodes
    wide = tone_tasks(ways=4, queries=1, classes={"train": [0, 1, 2, 3, 4], "val": [],
                                                   "test": []})
    episode = wide.sample("train", 2, torch.Generator().manual_seed(0))
    assert model.predict(episode).shape == (2, 4, 4)


@pytest.mark.skipif(not HAS_FSDD, reason="needs HYPERMETA_DATA with fsdd/ (make test sets it)")
def test_fsdd_loader_uses_the_official_split_and_one_speaker_per_task() -> None:
    source = fsdd_tasks(DATA, test_speaker="theo", shots=1, queries=3)
    assert isinstance(source, FSDDTasks)
    assert source.x.shape == (3000, 41, 32)
    test = source.fixed_tasks("test")
    assert test.num_tasks == 20 and test.query_x.shape[1] == 50  # takes 0-4 x 10 digits
    assert sorted(test.query_y[0].tolist()) == sorted(list(range(10)) * 5)
    clips = source.clips
    theo = clips.groups.index("theo")
    # every test query is theo's take 0-4; training episodes never touch theo
    rows = {tuple(r.tolist()): i for i, r in enumerate(source.x[:, 0, :4])}
    for x in test.query_x[0]:
        i = rows[tuple(x[0, :4].tolist())]
        assert clips.group[i] == theo and clips.take[i] < 5
    train = source.sample("train", 4, torch.Generator().manual_seed(0))
    for x in train.support_x.flatten(0, 1):
        i = rows[tuple(x[0, :4].tolist())]
        assert clips.group[i] != theo and clips.take[i] >= 5
    with pytest.raises(ValueError, match="unknown FSDD speakers"):
        fsdd_tasks(DATA, test_speaker="nobody")
    with pytest.raises(ValueError, match="10-way"):
        fsdd_tasks(DATA, ways=5)


@pytest.fixture(scope="module")
def tiny_words(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not HAS_ESPEAK:
        pytest.skip("needs espeak-ng (make installs it)")
    path = tmp_path_factory.mktemp("words") / "words.npz"
    return prepare_spoken_words(out=str(path), max_words=3, max_voices=3)


def test_spoken_words_keep_words_and_voices_apart(tiny_words: Path) -> None:
    source = spoken_words_tasks(str(tiny_words), ways=2, shots=1, queries=2)
    lists = word_lists()
    names = {s: {source.labels[c] for c in source.classes[s]} for s in ("train", "val", "test")}
    for split in ("train", "val", "test"):
        assert names[split] == set(lists["words"][split][:3])
    assert not set(lists["voices"]["train"]) & set(lists["voices"]["test"])
    assert source.x.shape[1:] == (41, 32) and torch.isfinite(source.x).all()
    # 3 words x 3 voices per split: every class has one clip per voice of its split
    assert len(source.x) == 27
    digits = spoken_words_tasks(str(tiny_words), ways=10, shots=1, queries=1, digits=True)
    for split in ("train", "val", "test"):  # the ten digits, each split from its voices
        assert {digits.labels[c] for c in digits.classes[split]} == set(DIGITS)
    assert len(digits.x) == 90
    with pytest.raises(FileNotFoundError, match="data prepare spoken-words"):
        spoken_words_tasks(str(tiny_words.with_name("missing.npz")))


@pytest.fixture(scope="module")
def words_run(tiny_words: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("run") / "words"
    config = RunConfig.from_file(
        Path(__file__).resolve().parents[1] / "configs" / "speech_hypernet.yaml",
        [f"tasks.data_file={tiny_words}", "tasks.ways=2", "tasks.queries=2",
         "target.hidden=16", "target.out_dim=2", "encoder.hidden=32", "encoder.dim=8",
         "hypernet.hidden=[16]", "class_head.hidden=16", "train.steps=4",
         "train.meta_batch=2", "train.val_every=2", "train.val_tasks=4"])
    fit(config, run_dir)
    return run_dir


def b64(data: np.ndarray) -> str:
    return base64.b64encode(write_wav(data)).decode()


def test_server_takes_wavs_as_json_and_multipart_alike(words_run: Path, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from hypermeta.serve import create_app

    client = TestClient(create_app(words_run, state_dir=tmp_path / "state"))
    clips = [tone(300), chirp(500, 900), tone(1200), chirp(2000, 1500)]
    made = client.post("/v1/tasks", json={"support": {"x": [b64(c) for c in clips[:2]],
                                                      "y": [0, 1]}})
    assert made.status_code == 201, made.text
    task = made.json()["task_id"]
    by_json = client.post(f"/v1/tasks/{task}/predict", json={"x": [b64(c) for c in clips]})
    assert by_json.status_code == 200, by_json.text
    files = [("files", (f"{i}.wav", write_wav(c), "audio/wav")) for i, c in enumerate(clips)]
    by_upload = client.post(f"/v1/tasks/{task}/predict/wav", files=files)
    assert by_upload.status_code == 200, by_upload.text
    assert np.allclose(by_upload.json()["probabilities"], by_json.json()["probabilities"],
                       atol=1e-6)
    uploaded = client.post("/v1/tasks/wav", files=files[:2], data={"y": "0,1"})
    assert uploaded.status_code == 201, uploaded.text
    again = client.post(f"/v1/tasks/{uploaded.json()['task_id']}/predict",
                        json={"x": [b64(c) for c in clips]})
    assert np.allclose(again.json()["probabilities"], by_json.json()["probabilities"],
                       atol=1e-6)
    before = client.get("/metrics").json()
    stereo = base64.b64encode(wav_bytes(tone(300), channels=2)).decode()
    silent = base64.b64encode(wav_bytes(np.zeros(800, np.float32))).decode()
    for bad, where in (({"support": {"x": [b64(clips[0]), stereo], "y": [0, 1]}}, "2 channels"),
                       ({"support": {"x": [b64(clips[0]), silent], "y": [0, 1]}}, "silent"),
                       ({"support": {"x": [b64(clips[0]), "bm90IGEgd2F2"], "y": [0, 1]}},
                        "not a readable WAV")):
        answer = client.post("/v1/tasks", json=bad)
        assert answer.status_code == 422 and where in answer.text, answer.text
    bad_upload = client.post("/v1/tasks/wav", files=files[:2], data={"y": "0,one"})
    assert bad_upload.status_code == 422 and "comma-separated" in bad_upload.text
    after = client.get("/metrics").json()
    assert after["tasks_stored"] == before["tasks_stored"] == 2  # nothing more stored


def test_waveform_onnx_export_equals_the_in_memory_model(words_run: Path,
                                                        tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    from typer.testing import CliRunner

    from hypermeta.cli import app

    folder = tmp_path / "support"
    for name, clip in (("high", tone(2000)), ("low", tone(250))):
        (folder / name).mkdir(parents=True)
        (folder / name / "a.wav").write_bytes(write_wav(clip))
    out = tmp_path / "speaker.onnx"
    result = CliRunner().invoke(app, ["export", str(words_run), "--out", str(out),
                                      "--support", str(folder)])
    assert result.exit_code == 0, result.output
    assert "0 = high, 1 = low" in result.output and "waveforms [N, 6400]" in result.output
    from hypermeta.audio import wav_folder
    from hypermeta.runs import load_hypermodel

    run = load_hypermodel(words_run)
    x, y, _ = wav_folder(folder, run.tasks.front_end)
    network = run.hypermodel.generate(run.tasks.support_episode(x, y))[0]
    model = WaveformModel(run.tasks.front_end, network).eval()
    waves = np.stack([fit_length(c, 6400) for c in (tone(2100), tone(260), chirp(300, 600))])
    with torch.no_grad():
        expected = model(torch.from_numpy(waves)).numpy()
    session = ort.InferenceSession(str(out))
    got = session.run(None, {session.get_inputs()[0].name: waves})[0]
    assert np.allclose(got, expected, atol=1e-4)
    empty = tmp_path / "empty"
    (empty / "a").mkdir(parents=True)
    result = CliRunner().invoke(app, ["export", str(words_run), "--out", str(tmp_path / "x"),
                                      "--support", str(empty)])
    assert result.exit_code != 0 and "holds no .wav" in result.output
    json.dumps(result.output)
