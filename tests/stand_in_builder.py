"""A stand-in for TensorRT 10's builder side, strict where the toolkit's build code can go wrong
(the runtime and CUDA: tests/stand_in_tensorrt.py).

- the builder calls the INT8 calibrator as TensorRT 10 does: ``read_calibration_cache``,
  then ``get_batch`` until None (no batch at all: the build fails and returns None), then
  ``write_calibration_cache`` with a ``memoryview``; ``create_timing_cache`` returns None for
  bytes that are no timing cache, and ``set_timing_cache(None)`` raises TypeError.
"""

from __future__ import annotations

import types


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
                calibrator = config.int8_calibrator
                if calibrator is not None and not world.calibrate(calibrator, config):
                    world.events.append(("calibration failure",))
                    return None  # "Calibration failure occurred with no scaling factors detected"
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

    def calibrate(self, calibrator, config) -> bool:
        """TensorRT 10's calibration: the cache if it has one, else batches until None."""
        cache = calibrator.read_calibration_cache()
        if cache:
            self.events.append(("cache read", len(cache)))
            return True
        batches = 0
        while calibrator.get_batch(["input"]) is not None:
            batches += 1
        self.events.append(("batches", batches))
        if not batches:
            return False
        calibrator.write_calibration_cache(memoryview(b"TRT-10130-EntropyCalibration2\ninput: 3c010a14\n"))
        return True
