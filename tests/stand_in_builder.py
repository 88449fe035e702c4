"""A stand-in for TensorRT 10's builder side, strict where the toolkit's build code can go wrong
(the runtime and CUDA: tests/stand_in_tensorrt.py).

- the builder calls the INT8 calibrator as TensorRT 10 does, and only with
  ``BuilderFlag.INT8`` set (TensorRT 10 runs calibration only for an INT8 build: without
  the flag the calibrator is ignored and the engine is FP16/FP32): ``read_calibration_cache``,
  then, unless that cache is usable, ``get_batch`` until None (no batch at all: the build fails
  and returns None), then ``write_calibration_cache`` with a ``memoryview``;
- a cache is parsed as TensorRT's format (``TRT-<version>-<Algorithm>`` first,
  then ``name: <hex of the big-endian float32 scale>`` lines) and used only by the calibrator
  class that wrote it; TensorRT skips a cache it cannot use and calibrates instead
  (NVIDIA/TensorRT#1378, a TensorRT maintainer: "trt will skip the file if it is incompatible");
- every build is recorded as ``("built", flags, calibrated)``;
- ``create_timing_cache`` returns None for bytes that are no timing cache, and
  ``set_timing_cache(None)`` raises TypeError.
"""

from __future__ import annotations

import re
import struct
import types

# TensorRT calibrator class -> the algorithm its caches name in their header
ALGORITHMS = {"IInt8EntropyCalibrator2": "EntropyCalibration2", "IInt8MinMaxCalibrator": "MinMaxCalibration"}


class UnusableCache(ValueError):
    """A calibration cache TensorRT would skip."""


def read_cache(cache: bytes, algorithm: str) -> dict[str, float]:
    """The scales of a TensorRT calibration cache written by ``algorithm``'s calibrator."""
    header, *lines = bytes(cache).decode("ascii", errors="replace").splitlines()
    match = re.fullmatch(r"TRT-(\d+)-(\w+)", header)
    if match is None:
        raise UnusableCache(f"header {header!r} is not TRT-<version>-<Algorithm>")
    if match.group(2) != algorithm:
        raise UnusableCache(f"written by {match.group(2)}, read by {algorithm}")
    scales = {}
    for number, line in enumerate(lines, start=2):
        name, _, scale = line.rpartition(": ")
        if not name or not re.fullmatch(r"[0-9a-fA-F]{8}", scale):
            raise UnusableCache(f"line {number} {line!r} is not name: <8 hex digits>")
        scales[name] = struct.unpack(">f", bytes.fromhex(scale))[0]
    return scales


class Builder:
    """Stands in for TensorRT 10's builder side (``tensorrt`` flavour, weak typing): builds
    ``b"engine"`` from any ONNX file, calling an INT8 calibrator the way TensorRT does."""

    def __init__(self) -> None:
        world = self
        self.events: list[tuple] = []
        self.timing_cache_bytes = b"timing cache v1"

        class Tensor:
            def __init__(self, name, shape, dtype="FLOAT"):
                self.name, self.shape, self.dtype = name, tuple(shape), f"DataType.{dtype}"

        class Network:
            def __init__(self, flags):
                self.flags, self.inputs, self.outputs = flags, [], []

            @property
            def num_inputs(self):
                return len(self.inputs)

            @property
            def num_outputs(self):
                return len(self.outputs)

            def get_input(self, i):
                return self.inputs[i]

            def get_output(self, i):
                return self.outputs[i]

        class OnnxParser:
            num_errors = 0

            def __init__(self, network, logger):
                self.network = network

            def parse_from_file(self, path):
                import onnx

                graph = onnx.load(path, load_external_data=False).graph

                def dims(value):
                    return [d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim]

                self.network.inputs = [Tensor(v.name, dims(v)) for v in graph.input]
                self.network.outputs = [Tensor(v.name, dims(v)) for v in graph.output]
                return True

        class TimingCache:
            def __init__(self, data):
                self.data = data

            def serialize(self):
                return memoryview(self.data)

        class Profile:
            def set_shape(self, name, low, opt, high):
                self.shapes = (low, opt, high)

        class Config:
            def __init__(self):
                self.flags, self.int8_calibrator, self.progress_monitor, self.cache = set(), None, None, None

            def set_flag(self, flag):
                self.flags.add(flag)

            def set_memory_pool_limit(self, pool, size):
                pass

            def add_optimization_profile(self, profile):
                self.profile = profile
                return 0

            def set_calibration_profile(self, profile):
                self.calibration_profile = profile

            def create_timing_cache(self, data):
                data = bytes(data)
                if data and not data.startswith(b"timing cache"):
                    world.events.append(("timing cache unreadable", len(data)))
                    return None  # as TensorRT's createTimingCache returns nullptr
                return TimingCache(data or world.timing_cache_bytes)

            def set_timing_cache(self, cache, ignore_mismatch):
                if not isinstance(cache, TimingCache):
                    raise TypeError("set_timing_cache(): incompatible function arguments")
                self.cache = cache
                return True

            def get_timing_cache(self):
                return self.cache

        class TrtBuilder:
            def __init__(self, logger):
                pass

            def create_network(self, flags=0):
                return Network(flags)

            def create_builder_config(self):
                return Config()

            def create_optimization_profile(self):
                return Profile()

            def build_serialized_network(self, network, config):
                calibrator = config.int8_calibrator if "INT8" in config.flags else None
                if calibrator is not None and not world.calibrate(calibrator):
                    world.events.append(("calibration failure",))
                    return None  # "Calibration failure occurred with no scaling factors detected"
                world.events.append(("built", tuple(sorted(config.flags)), calibrator is not None))
                return memoryview(b"engine")

        class Calibrator:  # the base classes' own __init__ takes no arguments
            def __init__(self):
                pass

        class ProgressMonitor:
            def __init__(self):
                pass

        flag_names = ("FP16", "INT8", "VERSION_COMPATIBLE")
        self.trt = types.SimpleNamespace(
            __version__="10.13.0",
            Logger=type("Logger", (), {"ERROR": 0, "__init__": lambda self, level=0: None}),
            Builder=TrtBuilder,
            OnnxParser=OnnxParser,
            IProgressMonitor=ProgressMonitor,
            NetworkDefinitionCreationFlag=types.SimpleNamespace(STRONGLY_TYPED=5),
            BuilderFlag=types.SimpleNamespace(**{n: n for n in flag_names}),
            MemoryPoolType=types.SimpleNamespace(WORKSPACE="workspace"),
            Dims=tuple,
            IInt8EntropyCalibrator2=type("IInt8EntropyCalibrator2", (Calibrator,), {}),
            IInt8MinMaxCalibrator=type("IInt8MinMaxCalibrator", (Calibrator,), {}),
        )

    def calibrate(self, calibrator) -> bool:
        """TensorRT 10's calibration: the cache if it has a usable one, else batches until None."""
        algorithm = next(ALGORITHMS[c.__name__] for c in type(calibrator).__mro__ if c.__name__ in ALGORITHMS)
        cache = calibrator.read_calibration_cache()
        if cache:
            try:
                self.events.append(("cache read", read_cache(cache, algorithm)))
                return True
            except UnusableCache as exc:
                self.events.append(("cache skipped", str(exc)))
        batches = 0
        while calibrator.get_batch(["input"]) is not None:
            batches += 1
        self.events.append(("batches", batches))
        if not batches:
            return False
        calibrator.write_calibration_cache(memoryview(f"TRT-10130-{algorithm}\ninput: 3c010a14\n".encode()))
        return True
