"""Run the Triton kernels on CPU tensors through Triton's interpreter (tests and debugging only).

``triton.jit`` decides at decoration time whether a kernel is compiled or interpreted, from
``TRITON_INTERPRET``. :func:`load_interpreted` sets that variable only while the ``kernels.triton_*``
modules are imported and restores it afterwards, so nothing else in the process (another test
package, ``torch.compile``) sees it. Call it before anything imports those modules.
"""
from __future__ import annotations

import importlib.util
import os
import sys

MODULES = ("triton_norm", "triton_attention", "triton_sampling", "triton_conv")


def _numpy24_index_fix() -> None:
    """Triton < 3.8's interpreter turns scalars into Python ints with ``int(ndarray_of_size_1)``,
    which numpy >= 2.4 rejects (loop bounds then fail with "only 0-dimensional arrays can be
    converted"). Triton 3.8 reads ``.squeeze()`` instead; give 3.6/3.7 the same behaviour."""
    import numpy as np
    import triton.runtime.interpreter as interp

    try:
        int(np.zeros(1, dtype=np.int32))
        return  # this numpy still accepts it
    except TypeError:
        pass
    original = interp._patch_lang_tensor
    if getattr(original, "_voxline_fixed", False):
        return

    def patched(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    patched._voxline_fixed = True
    interp._patch_lang_tensor = patched


def _interpreted_already() -> bool:
    import triton.language.standard as std
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(std.max, InterpretedFunction)


def load_interpreted() -> bool:
    """Import the Triton kernel modules in interpreter mode. Returns False when Triton is missing.

    ``TRITON_INTERPRET`` must be set when *triton itself* is first imported (its standard library,
    ``tl.max`` and friends, is jit-decorated then). If something imported triton compiled before
    (``import torch._dynamo`` does), interpretation is impossible in this process: RuntimeError.
    """
    try:
        if importlib.util.find_spec("triton") is None:
            return False
    except ValueError:  # triton's module entry set to None (tests that hide it)
        return False
    if "triton" in sys.modules and not _interpreted_already():
        raise RuntimeError("triton was imported (compiled mode) before kernels.interpret.load_interpreted(); "
                           "the interpreter must be chosen before triton's first import in the process")
    before = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        try:
            import triton  # noqa: F401  (decorates triton.language under the interpreter)
        except ImportError:
            return False
        # Imported lazily by the launcher (argument mangling); it asserts interpretation at import.
        import triton.experimental.gluon  # noqa: F401
        _numpy24_index_fix()
        from kernels import backend
        for m in MODULES:
            if backend.triton_module(m) is None:
                raise ImportError(f"kernels.{m}: {backend._import_errors.get(m)}")
            if not backend.triton_module(m).INTERPRETED:
                raise RuntimeError(f"kernels.{m} was imported compiled before load_interpreted()")
    finally:
        if before is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = before
    return True
