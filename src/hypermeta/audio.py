"""Audio: strict WAV decoding, band-limited resampling and a log-mel front end.

``read_wav`` turns WAV bytes into float32 samples at the model's rate and refuses what it cannot
use (not a WAV, stereo, not 16-bit, empty, silent, too long) with an error naming the problem.
``LogMel`` is the feature extractor: the short-time Fourier transform written as one strided
``conv1d`` with windowed cosine/sine kernels (equal to ``torch.stft(center=True,
pad_mode="reflect")`` with a periodic Hann window), power, a triangular HTK-mel filterbank, log,
and per-utterance normalisation. It is a plain ``nn.Module`` of standard ops, so it exports to
ONNX in front of a generated network (waveform in, logits out). torchaudio is not needed.
"""

from __future__ import annotations

import io
import math
import wave
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

SAMPLE_RATE = 8000
MAX_SECONDS = 10.0
SILENCE_PEAK = 1e-3  # peak |sample| below this (about -60 dBFS) is "silent"


def resample(wav: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Band-limited resampling by the FFT (the spectrum is cut at the lower Nyquist rate, so
    nothing aliases): ``[n]`` at ``rate_in`` -> ``[round(n * rate_out / rate_in)]``."""
    if rate_in <= 0 or rate_out <= 0:
        raise ValueError(f"sample rates must be positive, got {rate_in} and {rate_out}")
    if rate_in == rate_out or len(wav) < 2:
        return wav.astype(np.float32, copy=False)
    n_out = max(1, round(len(wav) * rate_out / rate_in))
    spectrum = np.fft.rfft(wav.astype(np.float64))
    keep = min(len(spectrum), n_out // 2 + 1)
    out = np.fft.irfft(spectrum[:keep], n=n_out) * (n_out / len(wav))
    return out.astype(np.float32)


def read_wav(data: bytes, *, sample_rate: int = SAMPLE_RATE, max_seconds: float = MAX_SECONDS,
             rates: tuple[int, ...] | None = None, what: str = "audio") -> np.ndarray:
    """Mono 16-bit PCM WAV bytes -> float32 samples in [-1, 1] at ``sample_rate``.

    Other rates are resampled (``resample``) unless ``rates`` lists the accepted ones. Raises
    ``ValueError`` naming ``what`` for bytes that are not a WAV file, more than one channel,
    other sample widths, an empty or silent clip (peak below -60 dBFS) or a clip longer than
    ``max_seconds``.
    """
    if not isinstance(data, (bytes, bytearray)):
        raise ValueError(f"{what}: expected WAV bytes, got {type(data).__name__}")
    try:
        with wave.open(io.BytesIO(bytes(data)), "rb") as reader:
            channels, width = reader.getnchannels(), reader.getsampwidth()
            rate = reader.getframerate()
            frames = reader.readframes(reader.getnframes())
    except (wave.Error, EOFError) as err:
        raise ValueError(f"{what} is not a readable WAV file ({err})") from None
    if channels != 1:
        raise ValueError(f"{what} has {channels} channels; need mono (mix it down first)")
    if width != 2:
        raise ValueError(f"{what} has {8 * width}-bit samples; need 16-bit PCM")
    if rates is not None and rate not in rates:
        raise ValueError(f"{what} is sampled at {rate} Hz; accepted: {list(rates)} Hz")
    samples = np.frombuffer(frames[: len(frames) // 2 * 2], dtype="<i2")
    if samples.size == 0:
        raise ValueError(f"{what} holds no samples (empty clip)")
    seconds = samples.size / rate
    if seconds > max_seconds:
        raise ValueError(f"{what} lasts {seconds:.2f} s; the limit is {max_seconds:g} s")
    wav = samples.astype(np.float32) / 32768.0
    if float(np.abs(wav).max()) < SILENCE_PEAK:
        raise ValueError(f"{what} is silent (peak below -60 dBFS)")
    return resample(wav, rate, sample_rate)


def write_wav(wav: np.ndarray, sample_rate: int = SAMPLE_RATE) -> bytes:
    """float samples in [-1, 1] -> mono 16-bit PCM WAV bytes (clipped)."""
    pcm = np.clip(np.round(np.asarray(wav, dtype=np.float64) * 32767), -32768, 32767)
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(sample_rate)
        writer.writeframes(pcm.astype("<i2").tobytes())
    return buffer.getvalue()


def fit_length(wav: np.ndarray, samples: int) -> np.ndarray:
    """The first ``samples`` values of ``wav``, zero-padded at the end when shorter."""
    out = np.zeros(samples, dtype=np.float32)
    out[: min(samples, len(wav))] = wav[:samples]
    return out


def hz_to_mel(hz: Tensor | float) -> Tensor:
    """HTK mel scale: ``2595 log10(1 + f / 700)``."""
    return 2595.0 * torch.log10(1.0 + torch.as_tensor(hz, dtype=torch.float64) / 700.0)


def mel_to_hz(mel: Tensor) -> Tensor:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def mel_filterbank(n_fft: int, n_mels: int, sample_rate: int, fmin: float = 0.0,
                   fmax: float | None = None) -> Tensor:
    """``[n_fft // 2 + 1, n_mels]`` triangular filters, centres equally spaced on the HTK mel
    scale between ``fmin`` and ``fmax`` (default Nyquist), peak 1 (no area normalisation)."""
    fmax = sample_rate / 2 if fmax is None else fmax
    if not 0 <= fmin < fmax <= sample_rate / 2:
        raise ValueError(f"need 0 <= fmin < fmax <= {sample_rate / 2}; got {fmin}, {fmax}")
    freqs = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    edges = mel_to_hz(torch.linspace(float(hz_to_mel(fmin)), float(hz_to_mel(fmax)),
                                     n_mels + 2, dtype=torch.float64))
    low, centre, high = edges[:-2], edges[1:-1], edges[2:]
    rising = (freqs[:, None] - low) / (centre - low)
    falling = (high - freqs[:, None]) / (high - centre)
    return torch.clamp(torch.minimum(rising, falling), min=0).float()


@dataclass(frozen=True)
class FrontEndConfig:
    """The audio front end of a task family: what a model's inputs are made from."""

    sample_rate: int = SAMPLE_RATE
    seconds: float = 0.8
    n_fft: int = 256
    hop: int = 160
    n_mels: int = 32
    fmin: float = 20.0

    @property
    def samples(self) -> int:
        return round(self.sample_rate * self.seconds)

    @property
    def frames(self) -> int:
        return 1 + self.samples // self.hop

    def module(self) -> LogMel:
        return LogMel(self.sample_rate, self.n_fft, self.hop, self.n_mels, self.fmin)

    def encode(self, files: Sequence[bytes | str | Path], what: str = "audio") -> Tensor:
        """WAV files (bytes or paths) -> model inputs ``[N, frames, n_mels]``: decoded strictly
        (``read_wav``; an error names ``what[i]``), resampled, cut or zero-padded, log-mel."""
        waves = []
        for i, item in enumerate(files):
            data = item if isinstance(item, bytes) else Path(item).read_bytes()
            wav = read_wav(data, sample_rate=self.sample_rate, what=f"{what}[{i}]")
            waves.append(fit_length(wav, self.samples))
        if not waves:
            raise ValueError(f"{what} is empty: no audio given")
        return features(self, np.stack(waves))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class LogMel(nn.Module):
    """Waveforms ``[..., samples]`` -> normalised log-mel frames ``[..., frames, n_mels]``.

    Frames are centred (the signal is reflect-padded by ``n_fft // 2``), Hann-windowed
    (periodic), ``frames = 1 + samples // hop``; each utterance's log-mel is normalised to
    zero mean and unit variance over all its frames and bands (``normalize=True``).
    """

    kernels: Tensor
    filterbank: Tensor

    def __init__(self, sample_rate: int = SAMPLE_RATE, n_fft: int = 256, hop: int = 160,
                 n_mels: int = 32, fmin: float = 20.0, normalize: bool = True) -> None:
        super().__init__()
        if n_fft < 2 or hop < 1 or n_mels < 1:
            raise ValueError(f"need n_fft >= 2, hop >= 1, n_mels >= 1; got {n_fft}, {hop}, "
                             f"{n_mels}")
        self.n_fft, self.hop, self.normalize = n_fft, hop, normalize
        n = torch.arange(n_fft, dtype=torch.float64)
        k = torch.arange(n_fft // 2 + 1, dtype=torch.float64)
        window = 0.5 - 0.5 * torch.cos(2 * math.pi * n / n_fft)  # periodic Hann
        angle = 2 * math.pi * k[:, None] * n[None, :] / n_fft
        kernels = torch.cat([window * torch.cos(angle), -window * torch.sin(angle)])
        self.register_buffer("kernels", kernels[:, None, :].float(), persistent=False)
        self.register_buffer("filterbank", mel_filterbank(n_fft, n_mels, sample_rate, fmin),
                             persistent=False)

    def power(self, wav: Tensor) -> Tensor:
        """``[B, samples]`` -> power spectrogram ``[B, n_fft // 2 + 1, frames]``."""
        pad = self.n_fft // 2
        padded = F.pad(wav[:, None, :], (pad, pad), mode="reflect")
        spec = F.conv1d(padded, self.kernels, stride=self.hop)  # (B, 2F, frames)
        real, imag = spec.chunk(2, dim=1)
        return real**2 + imag**2

    def forward(self, wav: Tensor) -> Tensor:
        lead = wav.shape[:-1]
        power = self.power(wav.reshape(-1, wav.shape[-1]))
        mel = torch.log(power.transpose(1, 2) @ self.filterbank + 1e-6)  # (B, frames, mels)
        if self.normalize:
            mean = mel.mean(dim=(1, 2), keepdim=True)
            std = mel.std(dim=(1, 2), keepdim=True)
            mel = (mel - mean) / (std + 1e-5)
        return mel.reshape(*lead, *mel.shape[1:])


def features(front_end: FrontEndConfig, waves: np.ndarray | Tensor,
             batch: int = 512) -> Tensor:
    """Log-mel features ``[N, frames, n_mels]`` of fixed-length waveforms ``[N, samples]``
    (float in [-1, 1], or int16 PCM), computed in batches without gradients."""
    module = front_end.module()
    data = torch.as_tensor(np.asarray(waves) if not isinstance(waves, Tensor) else waves)
    if not data.is_floating_point():
        data = data.float() / 32768.0
    with torch.no_grad():
        parts = [module(data[i: i + batch].float()) for i in range(0, len(data), batch)]
    return torch.cat(parts) if parts else torch.zeros(0, front_end.frames, front_end.n_mels)


class WaveformModel(nn.Module):
    """Raw audio in: the log-mel front end in front of a network that reads its features, so
    an exported model takes waveforms ``[N, samples]`` (float in [-1, 1] at the front end's
    rate, cut or zero-padded to ``samples``) and returns the network's outputs."""

    def __init__(self, front_end: FrontEndConfig, network: nn.Module) -> None:
        super().__init__()
        self.front_end, self.network = front_end.module(), network
        self.config = {"front_end": front_end.as_dict(),
                       "network": getattr(network, "config", None)}

    def forward(self, wav: Tensor) -> Tensor:
        out: Tensor = self.network(self.front_end(wav))
        return out


def wav_folder(folder: str | Path, front_end: FrontEndConfig) -> tuple[Tensor, Tensor, list[str]]:
    """A support set from ``folder/<class>/*.wav``: features ``[S, frames, n_mels]``, labels
    ``[S]`` (class ``i`` = the ``i``-th class folder in sorted order) and the class names."""
    root = Path(folder)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ValueError(f"{root} holds no class folders; want {root}/<class>/<clip>.wav")
    files: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        found = sorted((root / name).glob("*.wav"))
        if not found:
            raise ValueError(f"class folder {root / name} holds no .wav file")
        files += found
        labels += [label] * len(found)
    return front_end.encode(files, what=str(root)), torch.tensor(labels), classes
