"""The messages cgshim reads from the container runtime: ``cri.proto``, a read-only subset of
CRI runtime.v1 (compiled when first needed by :func:`cgshim.cri.messages`)."""
