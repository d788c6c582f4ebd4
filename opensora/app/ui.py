"""The Gradio page of the web app (``scripts/app.py``): controls -> :class:`~opensora.inference.app_handler.Form`.

Everything about a request (its flags, checks, output names, the run) is the handler's; this module lays out
the controls the loaded config can use, shows progress, errors, the video and the command line, and queues
requests (one runs at a time). Gradio is imported here only: the rest of the package does not need it.
"""
import logging
import os

import gradio as gr  # no `from __future__ import annotations`: Gradio reads the gr.Request annotations

from ..errors import InputError, RunError
from ..inference.app_handler import CAMERA_MOTIONS, TEXT_TO_IMAGE, AppHandler, Cancelled, Form

logger = logging.getLogger(__name__)

CONFIG_SIZE = "config"
QUEUED = "**Queued**: its place in the queue, then its progress, show over the video."
MOTION_SCORES = ("none", "1", "2", "3", "4", "5", "6", "7")  # 2.0's (upstream's examples use 1-7)


def describe(handler: AppHandler) -> str:
    base = handler.base
    if handler.version == 2:
        return f"Open-Sora 2.0, {base.model['type']} model, {base.ae['type']} autoencoder"
    return f"{base.model['type']}, {base.scheduler['type']} sampler"


def build_page(handler: AppHandler) -> gr.Blocks:
    caps, v2 = handler.capabilities, handler.version == 2
    size_label = (f"{caps.image_size[0]}x{caps.image_size[1]} (config)" if caps.image_size and not v2 else None)
    with gr.Blocks(title="Open-Sora (MindSpore)", analytics_enabled=False) as page:
        gr.Markdown(f"## Open-Sora on MindSpore\n`{handler.base.config}`: {describe(handler)}. "
                    f"Outputs go to `{handler.base.save_dir}`.")
        with gr.Row():
            with gr.Column():
                prompt = gr.Textbox(label="Prompt", lines=3, placeholder="Describe the video", elem_id="prompt")
                neg_prompt = gr.Textbox(label="Negative prompt (optional)", elem_id="neg-prompt")
                task = gr.Radio(list(caps.tasks), value=caps.tasks[0], label="Conditioning type" if v2 else "Task",
                                elem_id="task")
                with gr.Row():
                    start_image = gr.Image(label="Start frame", type="filepath", visible=False, elem_id="start-image")
                    end_image = gr.Image(label="End frame", type="filepath", visible=False, elem_id="end-image")
                    video_in = gr.Video(label="Video to extend", visible=False, elem_id="video-in")
                with gr.Row():
                    sizes = ([(size_label, CONFIG_SIZE)] if size_label else []) + list(caps.resolutions)
                    resolution = gr.Dropdown(sizes, value=CONFIG_SIZE if size_label else caps.resolution,
                                             label="Resolution", interactive=caps.any_size, elem_id="resolution")
                    aspect = gr.Dropdown(list(caps.aspect_ratios), value=caps.aspect_ratio or "9:16",
                                         label=f"Aspect ratio ({'W:H' if v2 else 'H:W'})", interactive=caps.any_size,
                                         elem_id="aspect")
                    duration = gr.Dropdown(list(dict.fromkeys([str(caps.num_frames), *caps.durations])),
                                           value=str(caps.num_frames), allow_custom_value=True,
                                           label="Frames (4k+1; 1: an image)" if v2 else
                                           "Duration (2s/4s/... or frames)", elem_id="duration")
                with gr.Row():
                    steps = gr.Number(caps.steps, precision=0, label="Sampling steps", minimum=1, elem_id="steps")
                    guidance = gr.Number(caps.guidance, label="Guidance scale", elem_id="guidance")
                    image_guidance = gr.Number(caps.image_guidance, label="Image guidance", visible=v2,
                                               elem_id="image-guidance")
                    seed = gr.Number(handler.base.seed, precision=0, label="Seed", elem_id="seed")
                    random_seed = gr.Checkbox(False, label="Random seed", elem_id="random-seed")
                with gr.Row(visible=caps.scores):  # 1.2's prompt suffixes
                    with gr.Column():
                        aes = gr.Slider(4, 7, value=caps.aes or 6.5, step=0.1, label="Aesthetic score", elem_id="aes")
                        use_aes = gr.Checkbox(caps.aes is not None, label="append to the prompt")
                    with gr.Column():
                        flow = gr.Slider(0, 100, value=5, step=1, label="Motion score", elem_id="flow")
                        use_flow = gr.Checkbox(False, label="append to the prompt")
                    camera = gr.Dropdown(["none", *CAMERA_MOTIONS], value="none", label="Camera motion")
                motion = gr.Dropdown(list(dict.fromkeys([caps.motion_score or "none", *MOTION_SCORES])),
                                     value=caps.motion_score or "none", allow_custom_value=True, visible=v2,
                                     label="Motion score (appended to the prompt; none: not)", elem_id="motion-score")
                with gr.Row():
                    name = gr.Textbox(label="Output name (blank: next free app-NNNN)", elem_id="name")
                    overwrite = gr.Checkbox(False, label="Overwrite existing files", elem_id="overwrite")
                with gr.Row():
                    generate_btn = gr.Button("Generate", variant="primary", elem_id="generate")
                    cancel_btn = gr.Button("Cancel", elem_id="cancel")
            with gr.Column():
                status = gr.Markdown("Ready.", elem_id="status")
                video_out = gr.Video(label="Video", buttons=["download"], interactive=False, elem_id="video-out")
                image_out = gr.Image(label="Image", type="filepath", buttons=["download"], interactive=False,
                                     visible=False, elem_id="image-out")
                command = gr.Textbox(label="Command line that makes the same file", lines=3, interactive=False,
                                     elem_id="command")

        def on_task(choice):
            uploads = caps.uploads.get(choice, ())
            return (gr.Image(visible="start" in uploads), gr.Image(visible="end" in uploads),
                    gr.Video(visible="video" in uploads), gr.Dropdown(interactive=choice != TEXT_TO_IMAGE))

        task.change(on_task, task, [start_image, end_image, video_in, duration], queue=False)

        def generate(prompt, neg_prompt, task, start_image, end_image, video_in, resolution, aspect, duration, steps,
                     guidance, image_guidance, seed, random_seed, use_aes, aes, use_flow, flow, camera, motion, name,
                     overwrite, request: gr.Request, progress=gr.Progress()):
            if v2:  # the config's size unless one of the two changed
                sized = (resolution, aspect) != (caps.resolution, caps.aspect_ratio)
            else:
                sized = caps.any_size and resolution not in (None, CONFIG_SIZE)
            form = Form(
                prompt=prompt or "", task=task, neg_prompt=neg_prompt or None, start_image=start_image,
                end_image=end_image, video=video_in, resolution=resolution if sized else None,
                aspect_ratio=aspect if sized else None,
                duration=None if str(duration) == str(caps.num_frames) else duration,
                steps=None if steps is None else int(steps), guidance=None if guidance is None else float(guidance),
                seed=None if random_seed or seed is None else int(seed),
                aes=float(aes) if caps.scores and use_aes else None,
                flow=float(flow) if caps.scores and use_flow else None,
                camera_motion=None if not caps.scores or camera == "none" else camera,
                image_guidance=float(image_guidance) if v2 and image_guidance is not None else None,
                motion_score=str(motion).strip() if v2 and motion is not None else None, name=name or None,
                overwrite=bool(overwrite))
            owner = getattr(request, "session_hash", None)
            progress(0.0, desc="starting")
            try:
                result = handler.generate(form, progress=lambda f, text: progress(f, desc=text), owner=owner)
            except (InputError, RunError, Cancelled) as err:
                kind = "Cancelled" if isinstance(err, Cancelled) else "Error"
                return gr.Video(value=None), gr.Image(value=None, visible=False), f"**{kind}:** {err}", ""
            except Exception as err:  # a bug: its traceback goes to the app's log
                logger.exception("request failed")
                return (gr.Video(value=None), gr.Image(value=None, visible=False),
                        f"**Error (a bug in the program; traceback in the app's log):** {type(err).__name__}: {err}",
                        "")
            shown = os.path.relpath(result.path)
            done = f"**Done** in {result.seconds:.1f} s: `{result.path if shown.startswith('..') else shown}`"
            if result.path.endswith(".png"):
                return gr.Video(value=None, visible=False), gr.Image(value=result.path, visible=True), done, \
                    result.command
            return gr.Video(value=result.path, visible=True), gr.Image(value=None, visible=False), done, result.command

        inputs = [prompt, neg_prompt, task, start_image, end_image, video_in, resolution, aspect, duration, steps,
                  guidance, image_guidance, seed, random_seed, use_aes, aes, use_flow, flow, camera, motion, name,
                  overwrite]
        # the status says at once that the request is in (Gradio shows its queue position and progress over the
        # video), then the request waits for its turn: one runs at a time
        generate_btn.click(lambda: QUEUED, None, status, queue=False).then(
            generate, inputs, [video_out, image_out, status, command], concurrency_limit=1, concurrency_id="generate",
            show_progress_on=[video_out])

        def cancel(request: gr.Request):
            if handler.cancel(owner=getattr(request, "session_hash", None)):
                return "Cancelling after the current step..."
            return "Nothing of yours is running (queued requests are cancelled when you leave the page)."

        cancel_btn.click(cancel, None, status, queue=False)
    page.queue(default_concurrency_limit=1)
    return page
