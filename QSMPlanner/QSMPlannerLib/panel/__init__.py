"""The Slicer panel's face on the workflow: ``logic.PlannerLogic`` (MRML nodes <-> workflow stages, long
stages in worker processes) and ``flow.run_whole_flow`` (the panel used top to bottom, as a user clicks).
Import the submodules explicitly: they load MRML (``slicer``)."""
