"""``python -m llama_cpp.server``, loading its model the way the embedded backend does.

Run as ``python -m provider.tests.llama_server --model FILE --port N ...`` (the server's own
arguments). It is llama-cpp-python's unchanged OpenAI-compatible server; only the two
platform settings of ``provider/backends/llamacpp.py`` apply (passive OpenMP waits, no
AMX weight buffers), for the same reason: without them the server dies with a
segmentation fault in its first decode on our VMs.
"""

from __future__ import annotations

import runpy

from provider.backends.llamacpp import without_extra_buffer_types

if __name__ == "__main__":
    with without_extra_buffer_types():
        runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
