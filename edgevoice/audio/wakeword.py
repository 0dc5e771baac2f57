"""Wake word detection on the 24 kHz capture stream with pymicro-wakeword's shipped models.

pymicro-wakeword 2.x runs microWakeWord's quantised TFLite models through the TFLite C
library bundled in its wheel (no TensorFlow; 1.x needed it and must not be used). It wants
16 kHz int16 mono, cut into 10 ms feature frames, and scores every third frame; the score is
the mean of the last ``sliding_window_size`` inferences. So the detector owns the whole
chain the model needs: the project's resampler (24 -> 16 kHz, state kept across chunks, so
chunk sizes never change a score), the feature frontend and the model.

A spoken wake word keeps the averaged score above the cutoff for several inferences in a
row; the refractory rule (re-armed only once the score fell back below the cutoff *and*
``refractory_s`` of audio has passed) makes one utterance fire once.

The package is an optional extra: imported only by ``load_wake_detector``, so a device with
``stream.gate`` other than ``wakeword`` never needs it.
"""

from __future__ import annotations

import logging
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from edgevoice.audio.g711 import PCM_RATE
from edgevoice.audio.resample import StreamingResampler
from edgevoice.errors import ConfigError
from edgevoice.settings import missing_extra

__all__ = ["MODELS", "MicroWakeWordDetector", "load_wake_detector"]

log = logging.getLogger(__name__)

MODEL_RATE: Final = 16000
FRAME_S: Final = 0.010  # one feature frame
# The models shipped inside pymicro-wakeword 2.x (settings.StreamSettings.wake_word).
MODELS: Final = ("okay_nabu", "hey_jarvis", "hey_mycroft", "alexa")
# Longer than the averaged score stays above the cutoff for one utterance (measured up to
# about 0.55 s), short enough that a second, deliberate "okay nabu" counts.
DEFAULT_REFRACTORY_S: Final = 1.0


class MicroWakeWordDetector:
    """One shipped model fed from 24 kHz chunks; ``process`` says whether it fired."""

    def __init__(
        self,
        model: Any,
        features: Any,
        *,
        name: str,
        phrase: str,
        cutoff: float,
        refractory_s: float = DEFAULT_REFRACTORY_S,
    ) -> None:
        # model/features are pymicro_wakeword objects; typed Any because the package is
        # optional and must not be imported at module level.
        self._model = model
        self._features = features
        self.name: str = name
        self.phrase: str = phrase
        self.cutoff: float = cutoff
        self._refractory_frames = max(0, round(refractory_s / FRAME_S))
        # Feature frames per inference (3 for the shipped models); the model counts them
        # from its own reset, as `_frames` does.
        self._stride = max(1, int(getattr(model, "stride", 1)))
        self._resampler = StreamingResampler(PCM_RATE, MODEL_RATE)
        self.last_probability: float = 0.0  # averaged score of the last detection
        self.last_detection_s: float | None = None  # where it fired, in audio_s
        self.detections: int = 0
        self._frames = 0  # feature frames since the last reset
        self._armed = True
        self._fired_frame: int | None = None

    @property
    def audio_s(self) -> float:
        """Audio scored since the last reset (feature frames), for logs and alignment."""
        return self._frames * FRAME_S

    def process(self, pcm24k: npt.NDArray[np.int16]) -> bool:
        """Score one chunk of 24 kHz mono audio; True if the wake word fired inside it."""
        pcm16k = self._resampler.process(pcm24k)
        if pcm16k.size == 0:
            return False
        fired = False
        for frame in self._features.process_streaming(pcm16k.tobytes()):
            self._frames += 1
            prob = self._model.process_streaming_prob(frame)
            # Between two inferences (every `stride` frames) the model answers 0.0, which
            # says nothing about the score; None: the model was closed.
            if prob is None or self._frames % self._stride:
                continue
            score = float(prob)
            if score <= self.cutoff:
                if self._fired_frame is None or (
                    self._frames - self._fired_frame >= self._refractory_frames
                ):
                    self._armed = True
                continue
            if not self._armed:
                continue
            self._armed = False
            self._fired_frame = self._frames
            self.last_probability = score
            self.last_detection_s = self._frames * FRAME_S
            self.detections += 1
            fired = True
        return fired

    def reset(self) -> None:
        """Forget the stream (a new capture stream, or after the device reopened)."""
        self._resampler.reset()
        self._features.reset()
        self._model.reset()  # reloads the interpreter: its streaming state has no reset
        self._frames = 0
        self._armed = True
        self._fired_frame = None
        self.last_detection_s = None

    def close(self) -> None:
        """Free the interpreter now rather than at garbage collection."""
        self._model.close()


def load_wake_detector(
    model: str, threshold: float | None, *, refractory_s: float = DEFAULT_REFRACTORY_S
) -> MicroWakeWordDetector:
    """Load a shipped model; ``threshold`` None keeps the model's own probability cutoff."""
    if model not in MODELS:
        raise ConfigError(f"stream.wake_word: {model!r} is not one of {', '.join(MODELS)}")
    if threshold is not None and not 0.0 < threshold <= 1.0:
        raise ConfigError(f"stream.wake_threshold: {threshold!r} must be in (0, 1]")
    try:
        import pymicro_wakeword
    except ImportError:
        raise missing_extra("stream.gate: wakeword", "wakeword") from None
    try:
        mww = pymicro_wakeword.MicroWakeWord.from_builtin(pymicro_wakeword.Model(model))
        features = pymicro_wakeword.MicroWakeWordFeatures()
    except (OSError, ValueError, RuntimeError) as exc:
        # A wheel for another architecture, or a broken install: the TFLite library or the
        # model file cannot be loaded. Retrying cannot help.
        raise ConfigError(
            f"stream.wake_word: cannot load the model {model!r} from pymicro-wakeword: {exc}"
        ) from None
    if threshold is not None:
        mww.probability_cutoff = threshold
    detector = MicroWakeWordDetector(
        mww,
        features,
        name=model,
        phrase=str(mww.wake_word),
        cutoff=float(mww.probability_cutoff),
        refractory_s=refractory_s,
    )
    log.info(
        "wake word model %s loaded (%r, cutoff %.2f)", model, detector.phrase, detector.cutoff,
        extra={"edgevoice": {"EVENT": "wake_model_loaded"}},
    )
    return detector
