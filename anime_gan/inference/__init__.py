"""Running a model: load it in any runtime, stylize one image, or stylize files, folders and videos.

    >>> from anime_gan import inference
    >>> stylizer = inference.load_model("checkpoints/hayao", runtime="auto")   # a Stylizer
    >>> anime = inference.stylize(photo_uint8, model="checkpoints/hayao")
    >>> summary = inference.run("checkpoints/hayao", "photos/", "anime/")     # what the command does

Modules, bottom up: `stylizer` (the Stylizer contract, brightness), `runners` (ONNX Runtime, OpenVINO,
LiteRT), `runtimes` (`load_model` and the per-machine `auto` table), `api` (the one-image API),
`faces` (face mode: detect, align, paste), `folders` (plans, Summary, Ctrl-C), `pipeline` (`run`: image
files in batches, videos), `video` (PyAV).
Importing this package does not import TensorFlow.
"""

from anime_gan.inference.api import MODEL_ENV, get_model, stylize
from anime_gan.inference.folders import Interrupted, StopOnCtrlC, Summary, folder_jobs, plan_output
from anime_gan.inference.pipeline import (DEFAULT_BATCH_SIZE, run, stylize_images, stylize_video, video_frames_fn,
                                          video_job)
from anime_gan.inference.runtimes import default_runtime, load_model
from anime_gan.inference.stylizer import (BRIGHTNESS_MODES, Stylizer, adjust_brightness, average_brightness,
                                          brightness_mode, model_error_message)

__all__ = [
    "BRIGHTNESS_MODES", "DEFAULT_BATCH_SIZE", "MODEL_ENV", "Interrupted", "StopOnCtrlC", "Stylizer", "Summary",
    "adjust_brightness", "average_brightness", "brightness_mode", "default_runtime", "folder_jobs", "get_model",
    "load_model", "model_error_message", "plan_output", "run", "stylize", "stylize_images", "stylize_video",
    "video_frames_fn", "video_job",
]
