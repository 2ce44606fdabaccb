"""Animated clips: AnimateDiff on the tiny pipeline with a tiny motion adapter, MP4 encoding, provenance.

Real diffusers + peft on CPU, real x264 through PyAV, real C2PA signing with a throwaway CA.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import io
from pathlib import Path

import diffusers
import numpy as np
import PIL.Image
import pytest
import torch
import transformers
from diffusers import MotionAdapter
from skimage import data

from engine import mp4, video_encode
from engine.ml.generate import GenerationStopped, Generator
from engine.ml.motion import MotionAdapterError, load_motion_adapter, motion_unet, tiny_motion_adapter
from engine.ml.pipeline import load_pipeline, loaded_adapters
from engine.ml.train import TrainConfig, pack_adapter, train_lora, unpack_adapter
from engine.ml.video import VideoGenerator, crossfade_loop, loop_overlap
from engine.presets import Preset, PresetError, load_presets
from engine.provenance.marking import ProvenanceConfig
from engine.provenance.verify import verify_main
from engine.provenance.video import frame_size, mark_video, verify_video
from tests.certs import CertChain, make_test_chain

diffusers.utils.logging.set_verbosity_error()
transformers.utils.logging.set_verbosity_error()

CPU = torch.device("cpu")
DEPLOYMENT = "video-test"
CLIP = Preset(
    "clip",
    "Clip (animated)",
    "portrait of {token}",
    "blurry",
    2,
    6.0,
    "1:1",
    video=True,
    frames=8,
    fps=8,
    loop=True,
)
STILL = Preset("still", "Still", "portrait of {token}", "blurry", 2, 6.0, "1:1")


@pytest.fixture(scope="module")
def pipe():
    return load_pipeline("tiny", CPU, torch.float32)


@pytest.fixture(scope="module")
def adapter(pipe) -> bytes:
    """A user's adapter in the real trained layout (1 training step), with weights strong enough to show."""
    photo = PIL.Image.fromarray(data.astronaut())
    result = train_lora(pipe, [photo], "a photo of sks person", TrainConfig(steps=1, rank=4, resolution=32))
    state, meta, info = unpack_adapter(result.adapter)
    g = torch.Generator().manual_seed(1)
    state = {k: torch.randn(v.shape, generator=g) * 0.5 for k, v in state.items()}
    from peft import LoraConfig

    prefixes = {k.partition(".")[0] for k in state}
    configs = {
        p: LoraConfig(**{k.removeprefix(p + "."): v for k, v in meta.items() if k.startswith(p + ".")})
        for p in prefixes
    }
    return pack_adapter(state, configs, info)


@pytest.fixture(scope="module")
def videos(pipe):
    generator = Generator(pipe)
    yield VideoGenerator(generator, "tiny")
    for owner in generator.owners():
        generator.forget(owner)


@pytest.fixture(scope="module")
def chain(tmp_path_factory) -> CertChain:
    return make_test_chain(tmp_path_factory.mktemp("c2pa"))


def _pan(count: int = 16, size: tuple[int, int] = (512, 640)) -> list[PIL.Image.Image]:
    """A slow pan over a real photo: content that moves, as in a clip."""
    photo = PIL.Image.fromarray(data.astronaut())
    return [photo.crop((2 * i, i, 448 + 2 * i, 448 + i)).resize(size) for i in range(count)]


# Presets --------------------------------------------------------------------------------------------------


def test_video_presets_ship_with_labels_that_say_animated():
    presets = load_presets(Path(__file__).resolve().parents[1] / "config" / "presets.toml")
    video = [p for p in presets.values() if p.video]
    assert len(video) >= 2
    assert all("animated" in p.label.lower() or "video" in p.label.lower() for p in video)
    assert all(8 <= p.frames <= 24 and p.fps == 8 for p in video)
    assert not any(p.video for p in presets.values() if p.key in {"headshot", "dating"})


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("frames = 16", "needs 'video = true'"),
        ("video = true\nframes = 100", "'frames' must be between"),
        ("video = true\nfps = 0", "'fps' must be between"),
        ("video = 1", "'video' must be true or false"),
        ("video = true\nloop = 'yes'", "'loop' must be true or false"),
    ],
)
def test_bad_video_fields_name_the_preset_and_field(tmp_path, extra, message):
    path = tmp_path / "p.toml"
    path.write_text(
        '[presets.v]\nlabel = "V"\nprompt = "{token}"\nnegative_prompt = ""\nsteps = 2\nguidance = 5\n'
        f'aspect = "1:1"\n{extra}\n'
    )
    with pytest.raises(PresetError, match=message):
        load_presets(path)


# Loop -----------------------------------------------------------------------------------------------------


def test_crossfade_loop_blends_the_tail_into_the_head():
    frames = [PIL.Image.new("RGB", (4, 4), (10 * i,) * 3) for i in range(20)]
    overlap = loop_overlap(16)
    assert overlap == 4
    out = crossfade_loop(frames, overlap)
    values = [np.asarray(f)[0, 0, 0] for f in out]
    assert len(out) == 16
    # frame 0 is 1/5 of generated frame 0 and 4/5 of frame 16 (the one after the last kept frame 15)
    assert values[0] == round(0.2 * 0 + 0.8 * 160)
    assert values[3] == round(0.8 * 30 + 0.2 * 190)
    assert values[4:] == [10 * i for i in range(4, 16)]
    # Played in a loop, the cut from frame 15 back to frame 0 (150 levels without the crossfade) is spread
    # over overlap + 1 steps of 22 each: no jump anywhere, the wrap included, exceeds that.
    steps = np.abs(np.diff(np.array([*values, values[0]], dtype=int)))
    assert steps.max() == 22 and steps.max() < 150 / (overlap + 1) + 10


def test_crossfade_loop_refuses_an_overlap_too_large():
    frames = [PIL.Image.new("RGB", (2, 2)) for _ in range(6)]
    with pytest.raises(ValueError):
        crossfade_loop(frames, 3)


# Motion UNet ----------------------------------------------------------------------------------------------


def test_motion_unet_shares_the_resident_layers_and_adds_only_motion_modules(pipe):
    adapter = tiny_motion_adapter(pipe.unet)
    unet = motion_unet(pipe.unet, adapter)
    resident = {id(p) for p in pipe.unet.parameters()}
    motion = {id(p) for p in adapter.parameters()}
    ids = {id(p) for p in unet.parameters()}
    assert ids == resident | motion  # nothing copied: every tensor is the resident UNet's or the adapter's
    assert resident <= ids and motion <= ids


def test_motion_adapter_from_a_folder_and_clear_errors(pipe, tmp_path):
    tiny_motion_adapter(pipe.unet).save_pretrained(tmp_path / "adapter")
    loaded = load_motion_adapter(str(tmp_path / "adapter"), pipe.unet)
    assert tuple(loaded.config.block_out_channels) == (32, 64)
    with pytest.raises(MotionAdapterError, match="does not exist"):
        load_motion_adapter(str(tmp_path / "missing"), pipe.unet)
    with pytest.raises(MotionAdapterError, match="off"):
        load_motion_adapter("off", pipe.unet)
    with pytest.raises(MotionAdapterError, match="not-a-real/adapter"):
        load_motion_adapter("not-a-real/adapter", pipe.unet)  # not in the offline cache
    wide = MotionAdapter(  # made for a three-block UNet
        block_out_channels=(32, 64, 128),
        motion_layers_per_block=2,
        motion_norm_num_groups=2,
        motion_num_attention_heads=4,
        use_motion_mid_block=False,
    )
    wide.save_pretrained(tmp_path / "wide")
    with pytest.raises(MotionAdapterError, match="channels"):
        load_motion_adapter(str(tmp_path / "wide"), pipe.unet)


# Generation -----------------------------------------------------------------------------------------------


def test_clip_with_the_users_adapter(videos, adapter, pipe):
    generator = videos.generator
    generator.load_adapter("alice", adapter)
    fractions: list[float] = []
    clip = videos.generate("alice", CLIP, "sks person", seed=3, progress=lambda f, _s: fractions.append(f))
    assert len(clip.frames) == CLIP.frames and clip.fps == 8 and clip.seconds == 1.0
    assert {f.size for f in clip.frames} == {(64, 64)}
    assert fractions == [0.5, 1.0]
    again = videos.generate("alice", CLIP, "sks person", seed=3)
    base = videos.generate(None, CLIP, "sks person", seed=3)
    pixels = [np.stack([np.asarray(f, dtype=np.int16) for f in c.frames]) for c in (clip, again, base)]
    assert np.array_equal(pixels[0], pixels[1])  # same seed, same clip
    assert np.abs(pixels[0] - pixels[2]).mean() > 2  # the user's LoRA acts in the motion UNet
    assert np.abs(np.diff(pixels[0], axis=0)).mean() > 0  # frames differ: it moves
    # stills still work on the same resident pipeline, which stays a 2D UNet with the adapter off
    assert type(pipe.unet).__name__ == "UNet2DConditionModel"
    assert len(generator.generate("alice", STILL, "sks person", 1, seed=3)) == 1
    generator.forget("alice")
    assert loaded_adapters(pipe) == set()


def test_clip_stops_on_request(videos):
    with pytest.raises(GenerationStopped):
        videos.generate(None, CLIP, "sks person", seed=1, should_stop=lambda: True)


def test_clip_refuses_still_presets_and_too_many_frames(videos):
    with pytest.raises(ValueError, match="not a video preset"):
        videos.generate(None, STILL, "sks person", seed=1)
    import dataclasses

    long = dataclasses.replace(CLIP, frames=40)
    with pytest.raises(ValueError, match="at most 32 frames"):
        videos.generate(None, long, "sks person", seed=1)


# Encoding -------------------------------------------------------------------------------------------------


def test_mp4_decodes_back_with_frame_count_rate_and_size():
    frames = _pan(16, (320, 400))
    clip = video_encode.encode_mp4(frames, 8)
    decoded = video_encode.decode_mp4(clip)
    assert (len(decoded.frames), decoded.fps, decoded.width, decoded.height) == (16, 8.0, 320, 400)
    assert (decoded.codec, decoded.pixel_format, decoded.audio_streams) == ("h264", "yuv420p", 0)
    kinds = [box.type for box in mp4.boxes(clip)]
    assert kinds.index(b"moov") < kinds.index(b"mdat")  # faststart: playable while downloading
    assert b"Lavf" not in clip  # bit-exact muxing: no encoder version in the container
    psnr = 10 * np.log10(
        255**2 / np.mean((np.asarray(frames[5], float) - np.asarray(decoded.frames[5], float)) ** 2)
    )
    assert psnr > 35


def test_colour_round_trip_has_no_level_shift():
    """swscale's fast RGB path darkens every level by about 1 per round trip, which flips watermark bits;
    our BT.601 conversion keeps the mean level and the luma (the watermark's plane) exact."""
    frames = _pan(4, (256, 320))
    once = video_encode.decode_mp4(video_encode.encode_mp4(frames, 8)).frames
    twice = video_encode.decode_mp4(video_encode.encode_mp4(once, 8)).frames
    for before, after in ((frames, once), (once, twice)):
        shift = np.mean(
            [np.asarray(b, float) - np.asarray(a, float) for a, b in zip(before, after, strict=True)]
        )
        assert abs(shift) < 0.25
    planar = video_encode.rgb_to_yuv420p(frames[0])
    back = video_encode.rgb_to_yuv420p(video_encode.yuv420p_to_rgb(planar, 256, 320))
    luma_diff = np.abs(back[:320].astype(int) - planar[:320])
    assert np.mean(luma_diff <= 1) > 0.995  # the luma plane survives RGB and back (but where RGB clips)


def test_odd_sizes_are_refused_and_frame_size_is_even():
    with pytest.raises(ValueError, match="even"):
        video_encode.encode_mp4([PIL.Image.new("RGB", (63, 64))], 8)
    assert frame_size(64, 64) == (512, 512)
    assert frame_size(96, 64) == (768, 512)
    assert frame_size(70, 45) == (798, 512)
    assert all(side % 2 == 0 for side in frame_size(333, 1001))


def test_faststart_moves_the_index_and_keeps_every_frame():
    out = io.BytesIO()
    import av

    with av.open(out, "w", format="mp4") as box:  # FFmpeg's default layout: mdat, then moov
        stream = box.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        for i in range(6):
            image = np.full((64, 64, 3), 40 * i, dtype=np.uint8)
            box.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        box.mux(stream.encode(None))
    late = out.getvalue()
    kinds = [box.type for box in mp4.boxes(late)]
    assert kinds.index(b"moov") > kinds.index(b"mdat")
    early = mp4.faststart(late)
    assert [b.type for b in mp4.boxes(early)][1] == b"moov" and len(early) == len(late)
    a, b = video_encode.decode_mp4(late), video_encode.decode_mp4(early)
    assert [np.asarray(f).tobytes() for f in a.frames] == [np.asarray(f).tobytes() for f in b.frames]


# Provenance -----------------------------------------------------------------------------------------------


def test_xmp_uuid_box_is_written_and_read_back():
    clip = video_encode.encode_mp4(_pan(2, (64, 64)), 8)
    assert mp4.read_xmp(clip) is None
    marked = mp4.add_xmp(clip, "<x>packet</x>")
    last = list(mp4.boxes(marked))[-1]
    assert last.type == b"uuid" and marked[last.start + 8 : last.start + 24] == mp4.XMP_UUID
    assert mp4.read_xmp(marked) == "<x>packet</x>"
    assert len(video_encode.decode_mp4(marked).frames) == 2  # still a valid MP4
    with pytest.raises(ValueError):
        mp4.add_xmp(b"not an mp4 at all", "x")


def test_marked_clip_carries_every_mark(chain):
    config = ProvenanceConfig(DEPLOYMENT, c2pa_cert=chain.cert, c2pa_key=chain.key)
    clip = mark_video(_pan(16), 8, config)
    report = verify_video(clip, trust_anchors=chain.root)
    assert (report.frames, report.fps, report.width, report.height) == (16, 8.0, 512, 640)
    assert report.watermark_frames == 16 and report.watermark
    assert report.iptc_xmp
    assert report.c2pa and report.c2pa_valid and report.c2pa_trusted and report.c2pa_ai_generated
    matched = verify_video(clip, ProvenanceConfig(DEPLOYMENT))
    assert matched.watermark_frames == 16
    assert verify_video(clip, ProvenanceConfig("another deployment")).watermark_frames == 0


def test_unmarked_clip_has_no_marks():
    clip = video_encode.encode_mp4(_pan(8), 8)
    report = verify_video(clip)
    assert report.watermark_frames == 0 and not report.watermark
    assert not report.iptc_xmp and not report.c2pa


def test_verify_command_reports_clip_and_frames(tmp_path, capsys):
    path = tmp_path / "clip.mp4"
    path.write_bytes(mark_video(_pan(8), 8, ProvenanceConfig(DEPLOYMENT)))
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(path.read_bytes()[:600])
    assert verify_main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "8 frames, 8 fps, 512x640" in out
    assert "watermark: present in 8/8 frames (100%)" in out
    assert "iptc/xmp:  present" in out
    assert verify_main([str(broken)]) == 2
    assert "error: cannot read image or video" in capsys.readouterr().out


def test_tiny_clip_marked_end_to_end(videos):
    clip = videos.generate(None, CLIP, "sks person", seed=5)
    data = mark_video(clip.frames, clip.fps, ProvenanceConfig(DEPLOYMENT))
    report = verify_video(data)
    assert report.frames == CLIP.frames and report.fps == 8.0
    assert (report.width, report.height) == (512, 512)  # 64x64 frames, upscaled for the watermark
    # smooth, upscaled noise is the hardest content for the watermark; one frame may fall short
    assert report.watermark and report.watermark_frames >= CLIP.frames - 1 and report.iptc_xmp


async def test_console_writes_a_delivered_clip_to_a_file(tmp_path):
    from bot.console import CHAT as CONSOLE_CHAT
    from bot.console import ConsoleFrontend
    from bot.events import Button, Reply

    lines: list[str] = []
    console = ConsoleFrontend(tmp_path / "out", write=lines.append)
    clip = mark_video(_pan(8, (256, 320)), 8, ProvenanceConfig(DEPLOYMENT))
    reply = Reply(
        "Clip · AI-generated", buttons=((Button("Another style", "styles"),),), animation=("c.mp4", clip)
    )
    assert len(await console.send(CONSOLE_CHAT, reply)) == 1  # one message
    assert (tmp_path / "out" / "c.mp4").read_bytes() == clip
    assert "AI-generated" in lines[0] and "c.mp4" in lines[0] and "[1] Another style" in lines[0]
    assert verify_video((tmp_path / "out" / "c.mp4").read_bytes()).watermark
