"""Triton kernels. On a GPU they compile; on the CPU they run only under
``TRITON_INTERPRET=1`` (tests, small shapes)."""
