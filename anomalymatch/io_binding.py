"""Running an ONNX Runtime session through I/O binding: one host input buffer reused for every batch,
outputs left where the provider computed them and copied to the host once per batch.

On the CUDA provider the input buffer is page-locked (pinned) host memory, so the host-to-device copy
is a DMA transfer instead of a staged copy through a driver bounce buffer: first ONNX Runtime's own
host-accessible allocator of the CUDA device (``OrtEpDevice.memory_info(HOST_ACCESSIBLE)``), else a
numpy buffer page-locked with ``cudaHostRegister`` (the CUDA runtime ONNX Runtime already loaded),
else plain pageable memory (still correct, only slower; ``input_memory`` says which). On the CPU
provider the same path runs with the buffer and outputs on the CPU, so its results can be compared
with ``session.run`` on any machine. No torch here."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from collections.abc import Sequence

import numpy as np

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"


def _as_array(address: int, shape: tuple[int, ...]) -> np.ndarray:
    """A writable uint8 numpy view of ``prod(shape)`` bytes at ``address`` (memory owned elsewhere)."""
    nbytes = int(np.prod(shape))
    return np.ctypeslib.as_array((ctypes.c_uint8 * nbytes).from_address(address)).reshape(shape)


def _cudart() -> ctypes.CDLL | None:
    """The CUDA runtime library (already loaded by the CUDA provider), or None."""
    names = ["libcudart.so.13", "libcudart.so.12", "libcudart.so.11.0", ctypes.util.find_library("cudart")]
    for name in filter(None, names):
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    return None


class BoundRunner:
    """``run(batch, outputs)`` for uint8 batches of at most ``capacity`` images of ``shape`` (H, W, 3).

    ``device`` "cuda" or "cpu": where the outputs are bound. One runner serves one thread at a time
    (the buffer is reused); ``OnnxScorer`` keeps one per scorer behind a lock."""

    _registered: tuple[ctypes.CDLL, int] | None = None  # (cudart, address) of a cudaHostRegister'ed buffer

    def __init__(self, session, input_name: str, capacity: int, shape: Sequence[int], device: str) -> None:
        import onnxruntime as ort

        if device not in ("cuda", "cpu"):
            raise ValueError(f"I/O binding device must be 'cuda' or 'cpu', got {device!r}")
        self.session, self.input_name, self.device = session, input_name, device
        self.capacity, self.shape = int(capacity), tuple(int(s) for s in shape)
        full = (self.capacity, *self.shape)
        self._keep: object = None  # whatever owns the buffer's memory
        self.input_memory = "cpu"
        if device == "cuda":
            self.buffer = self._pinned_by_ort(ort, full)
            if self.buffer is None:
                self.buffer = self._pinned_by_cudart(full)
        else:
            self._keep = np.empty(full, np.uint8)
            self.buffer = self._keep
        self.binding = session.io_binding()

    def _pinned_by_ort(self, ort, full: tuple[int, ...]) -> np.ndarray | None:
        kind = getattr(ort, "OrtDeviceMemoryType", None)
        devices = [d for d in getattr(ort, "get_ep_devices", list)() if d.ep_name == CUDA] if kind else []
        if not devices:
            return None
        try:
            info = devices[0].memory_info(kind.HOST_ACCESSIBLE)
            value = ort.OrtValue.ortvalue_from_shape_and_type(list(full), np.uint8, memory_info=info)
        except (RuntimeError, TypeError, ValueError, AttributeError) as exc:
            log.info("ONNX Runtime gave no host-accessible CUDA memory (%s); trying cudaHostRegister", exc)
            return None
        self._keep, self.input_memory = value, "pinned (ONNX Runtime host-accessible allocator)"
        return _as_array(value.data_ptr(), full)

    def _pinned_by_cudart(self, full: tuple[int, ...]) -> np.ndarray:
        array = np.empty(full, np.uint8)
        self._keep = array
        cudart = _cudart()
        if cudart is None:
            self.input_memory = "pageable (no CUDA runtime library found to pin it)"
            log.warning("I/O binding input buffer is not pinned: no libcudart found; host-to-device copies are slower")
            return array
        status = cudart.cudaHostRegister(ctypes.c_void_p(array.ctypes.data), ctypes.c_size_t(array.nbytes), 0)
        if status != 0:
            self.input_memory = f"pageable (cudaHostRegister returned CUDA error {status})"
            log.warning("I/O binding input buffer is not pinned: cudaHostRegister returned %d", status)
            return array
        self._registered = (cudart, array.ctypes.data)
        self.input_memory = "pinned (cudaHostRegister)"
        return array

    def run(self, batch: np.ndarray, outputs: Sequence[str]) -> list[np.ndarray]:
        """The named outputs for ``batch`` (uint8, (n, *shape), n <= capacity), as host numpy arrays."""
        n = len(batch)
        if n > self.capacity or tuple(batch.shape[1:]) != self.shape:
            raise ValueError(f"batch {batch.shape} does not fit the bound buffer {(self.capacity, *self.shape)}")
        self.buffer[:n] = batch  # the one host copy: into the reused (pinned) buffer
        self.binding.bind_input(self.input_name, "cpu", 0, np.uint8, [n, *self.shape], self.buffer.ctypes.data)
        for name in outputs:
            self.binding.bind_output(name, self.device)
        self.session.run_with_iobinding(self.binding)
        values = self.binding.copy_outputs_to_cpu()  # one device-to-host copy per output
        self.binding.clear_binding_outputs()
        return list(values)

    def close(self) -> None:
        if self._registered is not None:
            cudart, address = self._registered
            cudart.cudaHostUnregister(ctypes.c_void_p(address))
            self._registered = None

    def __del__(self) -> None:
        self.close()
