"""A stand-in for torchvision's GPU JPEG decoding (``decode_jpeg(list, device="cuda")``), as
strict as the real one where the toolkit's GPU decoding can go wrong, to drive it on a CPU.

What it holds the code to, from torchvision's io/image.py (``decode_jpeg``: "does not return
partial results in case of an error") and csrc/io/image/cuda/decode_jpegs_cuda.cpp:
- one decoder per process (``cudaJpegDecoder``), made again whenever a call names another
  device than the previous call's (the old one is leaked: its destructor frees nothing);
  ``created`` counts them, and ``original_device`` is the current device when the last one
  was made (its results are synchronised with that device's current stream): the call's
  ``CUDAGuard`` has made the device it names current by then, so a named device is its own;
- ``prepare_buffers`` reads every image's header and allocates its (3, H, W) output before
  anything is decoded (``allocated``); then one image nvJPEG cannot decode (corrupt data, a
  CMYK/YCCK file, or bytes listed in ``refuse``) fails the whole call with a RuntimeError;
- the outputs are allocated on the caller's current stream (``torch::empty``: the caching
  allocator may hand out a block freed on that stream whose last reader is still queued there)
  but written on the decoder's own stream, which does not wait for the current one: a call made
  while the caller's current stream has work queued (``queue_reader``) is an ``overwrites``
  entry unless that stream was synchronised first (``torch.cuda.current_stream().synchronize()``).
Pixels come from torchvision's CPU decoder; CPU tensors play the device's tensors.
"""

from __future__ import annotations

import contextlib
import io
import threading

import torch
from PIL.JpegImagePlugin import JpegImageFile
from torchvision.io import ImageReadMode
from torchvision.io import decode_jpeg as cpu_decode_jpeg


class NvJpeg:
    """Stands in for ``torchvision.io.decode_jpeg`` with a device, and for the
    ``torch.cuda.device`` / ``torch.cuda.current_device`` it depends on."""

    def __init__(self) -> None:
        self.target_device: torch.device | None = None
        self.original_device: torch.device | None = None
        self.current = 0  # the current CUDA device's index
        self.created = 0
        self.devices: list[torch.device] = []  # the device of every call
        self.allocated: list[tuple[int, int]] = []  # (height, width) of every output buffer
        self.refuse: set[bytes] = set()
        self.thread = threading.local()  # each thread's current stream: readers still queued on it
        self.overwrites: list[str] = []  # outputs written over blocks a queued reader still uses

    def queue_reader(self) -> None:
        """The calling thread's current stream gets a kernel that reads a block its caller has
        already freed to the caching allocator (as a finished tensor's last use is)."""
        self.thread.pending = getattr(self.thread, "pending", 0) + 1

    def current_stream(self, device=None):
        """``torch.cuda.current_stream``: the calling thread's, which ``synchronize`` drains."""
        state = self.thread

        class Stream:
            def synchronize(self) -> None:
                state.pending = 0

        return Stream()

    def __call__(self, input, mode=ImageReadMode.UNCHANGED, device="cpu", apply_exif_orientation=False):
        if not isinstance(input, list) or not input or any(t.device.type != "cpu" for t in input):
            raise ValueError("the stand-in takes what the toolkit passes: a non-empty list of CPU tensors")
        device = torch.device(device)
        self.devices.append(device)
        if device != self.target_device:  # made under CUDAGuard(device): a named device is current
            self.created += 1
            current = self.current if device.index is None else device.index
            self.target_device, self.original_device = device, torch.device("cuda", current)
        if getattr(self.thread, "pending", 0):  # allocated on the current stream, written on the decoder's
            self.overwrites.append(f"{threading.current_thread().name}: outputs written over a block still read")
        try:  # decode_jpegs_cuda wraps every failure of decode_images, prepare_buffers included
            return self._decode_images(input, mode)
        except RuntimeError as exc:
            raise RuntimeError(f"Error while decoding JPEG images: {exc}") from None

    def _decode_images(self, input: list, mode) -> list:
        for data in (
            bytes(t.numpy()) for t in input
        ):  # prepare_buffers: nvjpegGetImageInfo (no pixel limit), then torch::empty
            try:
                with JpegImageFile(io.BytesIO(data)) as image:
                    width, height = image.size
                    mode_of_file = image.mode
            except Exception as exc:
                raise RuntimeError(f"Failed to get image info: {exc}") from None
            self.allocated.append((height, width))
            if mode_of_file == "CMYK" or data in self.refuse:
                raise RuntimeError("nvJPEG cannot decode one image")
        return [cpu_decode_jpeg(t, mode=mode) for t in input]

    @contextlib.contextmanager
    def device(self, device):
        """``torch.cuda.device``: ``device`` is the current device inside."""
        previous, self.current = self.current, torch.device(device).index
        try:
            yield
        finally:
            self.current = previous

    def current_device(self) -> int:
        return self.current
