"""Videos in and out through PyAV (FFmpeg in its wheel): decode any container FFmpeg reads, apply a
function to the frames in batches, write H.264 (yuv420p, CRF 18) in MP4 (or MOV, MKV, AVI by the
destination's suffix, `image_io.VIDEO_CONTAINERS`) with the audio track kept.

    written, announced = transform_video(fn, "clip.mov", "anime.mp4", batch_size=4)

fn maps uint8 RGB [N, H, W, 3] to uint8 [N, H, W, 3] (a `anime_gan.inference.Stylizer`, or anything
else with that contract). Decoding, fn and encoding run at once: a decoding thread and an encoding
thread pass batches through queues of QUEUE_BATCHES batches each (so at most about
2 * QUEUE_BATCHES + 2 batches of frames are in memory), and fn runs in the calling thread.

What is kept:
- fps and timing: each output frame keeps its input frame's timestamp (pts) in the input stream's
  time base, so a variable frame rate survives; a frame without a usable timestamp gets the one
  after the previous frame's. The stream's frame rate is the input's average rate.
- frame count: one output frame per decoded input frame.
- size: exactly, when width and height are even. H.264 in 4:2:0 (the only chroma layout every
  player decodes) cannot code an odd width or height, not even by cropping (its crop unit is two
  pixels), so an odd side is padded by one repeated edge row or column (ODD_SIZE_NOTE).
- audio: the first audio stream is copied packet for packet when MP4 holds its codec as it is
  (AUDIO_COPY_CODECS: AAC, MP3); any other (PCM, Vorbis, Opus, ...) is re-encoded to AAC at its
  sample rate. Audio packets are interleaved with the video by time.

A packet that fails to decode (a corrupt frame) is skipped and counted; decoding goes on with the
next one. The output is written to a temporary file beside destination and moved into place only
when complete (`stop.check()` raising between batches, or any error, leaves nothing behind).
Failures a user can fix raise `ImageError` with one sentence.
"""

from __future__ import annotations

import fractions
import logging
import math
import os
import pathlib
import queue
import tempfile
import threading
import types

import numpy as np

from anime_gan.image_io import VIDEO_CONTAINERS, ImageError
from data_prep.files import make_readable

log = logging.getLogger(__name__)

VIDEO_CODEC = "libx264"
PIXEL_FORMAT = "yuv420p"
ENCODER_OPTIONS = {"crf": "18", "preset": "medium"}  # visually lossless, at a few ms per 256x256 frame
AUDIO_COPY_CODECS = ("aac", "mp3")  # remuxed into MP4 unchanged; anything else becomes AAC
AUDIO_CODEC = "aac"
# FFmpeg's AAC encoder takes these layouts; a stream of another channel count is mixed to stereo.
AAC_LAYOUTS = {1: "mono", 2: "stereo", 3: "3.0", 4: "4.0", 5: "5.0", 6: "5.1", 7: "6.1", 8: "7.1"}
QUEUE_BATCHES = 2  # batches waiting between two stages
ODD_SIZE_NOTE = "H.264 4:2:0 needs even sides: the last row/column was repeated once"
_END = object()  # the decoding thread's last item
_NEVER_STOP = types.SimpleNamespace(check=lambda: None)


def _av():
    try:
        import av
    except ImportError:  # pragma: no cover - av is a dependency of the package
        raise ImageError("videos need PyAV, which is not installed; install it with `pip install av`.") from None
    return av


def even_size(height, width):
    """(height, width) of the H.264 output: each side rounded up to even."""
    return height + height % 2, width + width % 2


def pad_to_even(frame):
    """An H x W x 3 frame with an odd side padded by repeating its last row / column."""
    h, w = frame.shape[:2]
    if not (h % 2 or w % 2):
        return frame
    return np.pad(frame, [(0, h % 2), (0, w % 2), (0, 0)], mode="edge")


def output_time_base(time_base, rate):
    """The finest time base both the input's timestamps and the frame rate's grid fall on (1 / the
    least common multiple of their denominators), or time_base itself when that exceeds MP4's 32 bits."""
    step = 1 / fractions.Fraction(rate)
    denominator = math.lcm(time_base.denominator, step.denominator)
    return fractions.Fraction(1, denominator) if denominator < 2**31 else time_base


class VideoInfo(types.SimpleNamespace):
    """width, height, rate (a Fraction, frames per second), frames (announced by the container, 0
    if none), estimated (frames, or duration x rate when none are announced), audio (codec name or
    None), time_base."""


def probe(source):
    """VideoInfo of a video file; ImageError (one sentence) when it cannot be read."""
    av = _av()
    container = _open_input(av, source)
    try:
        return _info(container, source)
    finally:
        container.close()


def _open_input(av, source):
    try:
        container = av.open(str(source), metadata_errors="ignore")
    except (av.FFmpegError, OSError, UnicodeDecodeError) as e:
        raise ImageError(f"{source} is not a readable video (FFmpeg cannot open it: {_reason(e)}); "
                         "check the file.") from None
    if not container.streams.video:
        container.close()
        raise ImageError(f"{source} is not a readable video (it has no video stream); check the file.")
    return container


def _reason(error):
    text = getattr(error, "strerror", None) or str(error)
    return text.strip().rstrip(".").replace("\n", " ")


def _info(container, source):
    stream = container.streams.video[0]
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    width, height = stream.codec_context.width, stream.codec_context.height
    if not rate or rate <= 0 or width <= 0 or height <= 0:
        raise ImageError(f"{source} reports no frame rate or size; re-encode it (e.g. with ffmpeg) and retry.")
    frames = max(int(stream.frames or 0), 0)
    estimated = frames
    if not frames:
        duration = (stream.duration * stream.time_base if stream.duration else
                    fractions.Fraction(container.duration or 0, 1_000_000))
        estimated = max(int(round(duration * rate)), 0)
    audio = container.streams.audio[0].codec_context.name if container.streams.audio else None
    return VideoInfo(width=width, height=height, rate=fractions.Fraction(rate), frames=frames, estimated=estimated,
                     audio=audio, time_base=stream.time_base)


class _Stage(threading.Thread):
    """A daemon thread running target(); its exception, if any, is kept for the caller to raise."""

    def __init__(self, name, target):
        super().__init__(name=name, daemon=True)
        self._target_fn = target
        self.error = None

    def run(self):
        try:
            self._target_fn()
        except BaseException as e:  # noqa: BLE001 - handed to the calling thread
            self.error = e


def _put(q, item, cancel):
    """q.put(item) unless cancel is set first; False when cancelled."""
    while not cancel.is_set():
        try:
            q.put(item, timeout=0.05)
            return True
        except queue.Full:
            continue
    return False


def _get(q, stage):
    """q.get(), raising the stage's error if it died without sending more."""
    while True:
        try:
            return q.get(timeout=0.05)
        except queue.Empty:
            if not stage.is_alive():
                try:
                    return q.get_nowait()
                except queue.Empty:
                    raise stage.error or RuntimeError(f"the {stage.name} thread stopped") from None


class _Decoder:
    """Decodes the first video stream into batches of (RGB frames [N, H, W, 3], pts list) on a queue."""

    def __init__(self, av, container, batch_size, cancel):
        self.av, self.container, self.batch_size, self.cancel = av, container, batch_size, cancel
        self.queue = queue.Queue(QUEUE_BATCHES)
        self.bad_packets = 0
        self.first_error = None

    def run(self):
        av, stream = self.av, self.container.streams.video[0]
        frames, stamps = [], []
        try:
            for packet in self._packets(stream):
                try:
                    decoded = packet.decode()
                except (av.FFmpegError, ValueError) as e:  # a corrupt frame: skip it, go on
                    self.bad_packets += 1
                    self.first_error = self.first_error or _reason(e)
                    continue
                for frame in decoded:
                    frames.append(frame.to_ndarray(format="rgb24"))
                    stamps.append(frame.pts)
                    if len(frames) == self.batch_size:
                        if not _put(self.queue, (np.stack(frames), stamps), self.cancel):
                            return
                        frames, stamps = [], []
            if frames:
                _put(self.queue, (np.stack(frames), stamps), self.cancel)
        finally:
            _put(self.queue, _END, self.cancel)

    def _packets(self, stream):
        """The stream's packets, then a flush packet; a demuxing error ends the stream (cut short)."""
        demux = self.container.demux(stream)
        while not self.cancel.is_set():
            try:
                packet = next(demux)
            except StopIteration:
                return
            except (self.av.FFmpegError, ValueError) as e:
                self.first_error = self.first_error or _reason(e)
                return
            yield packet  # the last one (size 0) flushes the decoder


class _AudioCopier:
    """The input's first audio stream into the output: packets remuxed as they are (a codec MP4 holds)
    or re-encoded to AAC; `until(seconds)` writes those up to a time, `finish()` the rest."""

    def __init__(self, av, source, output):
        self.av, self.output = av, output
        self.container = av.open(str(source), metadata_errors="ignore")
        self.input = self.container.streams.audio[0]
        self.copy = self.input.codec_context.name in AUDIO_COPY_CODECS
        if self.copy:
            self.stream = output.add_stream_from_template(self.input)
        else:
            rate = self.input.codec_context.sample_rate or 44100
            self.stream = output.add_stream(AUDIO_CODEC, rate=rate)
            channels = self.input.codec_context.layout.nb_channels
            self.stream.codec_context.layout = AAC_LAYOUTS.get(channels, "stereo")
            self.resampler = None
        self.demux = self.container.demux(self.input)
        self.pending = None
        self.done = False

    def until(self, seconds):
        """Writes the audio packets that start at or before `seconds`."""
        while not self.done:
            if self.pending is None:
                try:
                    self.pending = next(self.demux)
                except StopIteration:
                    self.done = True
                    break
                except (self.av.FFmpegError, ValueError):
                    self.done = True  # audio cut short: keep what was written
                    break
            packet = self.pending
            if seconds is not None and packet.pts is not None and packet.time_base is not None \
                    and packet.pts * packet.time_base > seconds:
                break
            self.pending = None
            self._write(packet)

    def _write(self, packet):
        if self.copy:
            if packet.dts is None:  # the demuxer's flush packet
                return
            packet.stream = self.stream
            self.output.mux(packet)
            return
        try:
            frames = packet.decode()
        except (self.av.FFmpegError, ValueError):
            return  # a corrupt audio packet: dropped
        for frame in frames:
            self._encode(frame)

    def _encode(self, frame):
        if self.resampler is None:
            ctx = self.stream.codec_context
            self.resampler = self.av.AudioResampler(format=ctx.format.name if ctx.format else "fltp",
                                                    layout=ctx.layout.name, rate=ctx.sample_rate,
                                                    frame_size=ctx.frame_size or 1024)
        for out in self.resampler.resample(frame):
            out.pts = None
            self.output.mux(self.stream.encode(out))

    def finish(self):
        self.until(None)
        if not self.copy:
            if self.resampler is not None:
                for out in self.resampler.resample(None):
                    out.pts = None
                    self.output.mux(self.stream.encode(out))
            self.output.mux(self.stream.encode(None))

    def close(self):
        self.container.close()


class _Encoder:
    """Encodes batches of (frames, pts) from a queue into the output's H.264 stream, the audio beside."""

    def __init__(self, av, output, info, source, cancel):
        self.av, self.output, self.info, self.cancel = av, output, info, cancel
        self.queue = queue.Queue(QUEUE_BATCHES)
        height, width = even_size(info.height, info.width)
        self.stream = output.add_stream(VIDEO_CODEC, rate=info.rate, options=dict(ENCODER_OPTIONS))
        self.stream.width, self.stream.height, self.stream.pix_fmt = width, height, PIXEL_FORMAT
        self.time_base = output_time_base(info.time_base, info.rate)
        self.stream.time_base = self.time_base
        self.stream.codec_context.time_base = self.time_base
        self.audio = _AudioCopier(av, source, output) if info.audio else None
        self.written = 0
        self.first = self.last_pts = None
        self.step = 1 / info.rate  # seconds per frame at the average rate

    def run(self):
        while True:
            item = _get_or_cancel(self.queue, self.cancel)
            if item is _END or item is None:
                break
            frames, stamps = item
            for array, pts in zip(frames, stamps):
                self._encode(array, pts)
        if self.cancel.is_set():
            return
        for packet in self.stream.encode(None):
            self.output.mux(packet)
        if self.audio is not None:
            self.audio.finish()

    def output_pts(self, pts):
        """The output timestamp (in self.time_base ticks) of a frame with input timestamp pts."""
        if pts is None:  # no timestamp: one frame after the previous one
            seconds = self.step * self.written if self.last_pts is None else self.last_pts * self.time_base + self.step
        else:
            seconds = pts * self.info.time_base
            if self.first is None:
                self.first = seconds
            # Within one input tick of the average rate's grid: a constant rate rounded to the time
            # base (e.g. 24 fps in milliseconds), so the exact grid time is written.
            n = round((seconds - self.first) * self.info.rate)
            grid = self.first + n * self.step
            if abs(seconds - grid) <= self.info.time_base and self.time_base != self.info.time_base:
                seconds = grid
        ticks = int(seconds / self.time_base)
        if self.last_pts is not None and ticks <= self.last_pts:  # never backwards nor twice
            ticks = self.last_pts + max(int(self.step / self.time_base), 1)
        self.last_pts = ticks
        return ticks

    def _encode(self, array, pts):
        frame = self.av.VideoFrame.from_ndarray(np.ascontiguousarray(pad_to_even(array)), format="rgb24")
        frame.pts, frame.time_base = self.output_pts(pts), self.time_base
        if self.audio is not None:
            self.audio.until(float(frame.pts * self.time_base))
        for packet in self.stream.encode(frame):
            self.output.mux(packet)
        self.written += 1

    def close(self):
        if self.audio is not None:
            self.audio.close()


def _get_or_cancel(q, cancel):
    while not cancel.is_set():
        try:
            return q.get(timeout=0.05)
        except queue.Empty:
            continue
    return None


def transform_video(fn, source, destination, batch_size=4, progress=None, stop=_NEVER_STOP, check_size=None):
    """Writes fn applied to every frame of source into destination (H.264 MP4, audio kept); see the
    module docstring. Returns (frames written, frames announced by the container or 0, info).

    check_size(height, width, name) may refuse the video (ImageError) before anything is written.
    progress: a tqdm bar, reset to the announced (or estimated) frame count and advanced per frame
    written. stop.check() runs before each batch goes to fn; what it raises propagates, and the
    temporary output is removed.
    """
    av = _av()
    source, destination = pathlib.Path(source), pathlib.Path(destination)
    container = _open_input(av, source)
    try:
        info = _info(container, source)
        if check_size is not None:
            check_size(info.height, info.width, str(source))
        if progress is not None:
            progress.reset(total=info.estimated or None)
        destination.parent.mkdir(parents=True, exist_ok=True)
        container_format = VIDEO_CONTAINERS.get(destination.suffix.lower(), "mp4")
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=destination.suffix, dir=destination.parent)
        os.close(fd)
        try:
            try:
                written = _run_pipeline(av, fn, container, info, source, tmp, container_format, batch_size, progress,
                                        stop)
            except OSError:
                raise  # av's errno errors (a full disk) are OSErrors too: "cannot write"
            except av.FFmpegError as e:
                raise ImageError(f"{source} could not be converted (FFmpeg: {_reason(e)}); re-encode it "
                                 "(e.g. with ffmpeg) and retry.") from None
            if written == 0:
                raise ImageError(f"{source} has no readable frames; check the file.")
            make_readable(tmp)
            os.replace(tmp, destination)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    finally:
        container.close()
    return written, info.frames, info


def _run_pipeline(av, fn, container, info, source, tmp, container_format, batch_size, progress, stop):
    cancel = threading.Event()
    try:
        output = av.open(tmp, "w", format=container_format)
    except (av.FFmpegError, OSError) as e:
        raise OSError(f"cannot write {tmp}: {_reason(e)}") from None
    decoder = encoder = None
    try:
        decoder = _Decoder(av, container, batch_size, cancel)
        encoder = _Encoder(av, output, info, source, cancel)
        threads = [_Stage("video decoding", decoder.run), _Stage("video encoding", encoder.run)]
        for thread in threads:
            thread.start()
        frames_in = 0
        try:
            while True:
                stop.check()
                item = _get(decoder.queue, threads[0])
                if item is _END:
                    break
                frames, stamps = item
                outputs = np.asarray(fn(frames))
                if outputs.shape != frames.shape or outputs.dtype != np.uint8:
                    raise ValueError(f"the model returned {outputs.dtype} {outputs.shape} for frames {frames.shape}")
                if not _put_checked(encoder.queue, (outputs, stamps), threads[1]):
                    break
                frames_in += len(frames)
                if progress is not None:
                    progress.update(len(frames))
            _put_checked(encoder.queue, _END, threads[1])
            threads[1].join()
            if threads[1].error is not None:
                raise threads[1].error
            if threads[0].error is not None:
                raise threads[0].error
        finally:
            cancel.set()
            for thread in threads:
                thread.join()
        if decoder.bad_packets:
            log.debug("%s: %d packets failed to decode (first: %s)", source, decoder.bad_packets, decoder.first_error)
        written = encoder.written
        info.bad_packets = decoder.bad_packets
    finally:
        try:
            output.close()
        except (av.FFmpegError, OSError):
            pass
        if encoder is not None:
            encoder.close()
    return written


def _put_checked(q, item, stage):
    """q.put(item) while the stage is alive; raises its error if it died."""
    while True:
        try:
            q.put(item, timeout=0.05)
            return True
        except queue.Full:
            if not stage.is_alive():
                raise stage.error or RuntimeError(f"the {stage.name} thread stopped")
