"""What-if: replay a workload through the real planner on a virtual clock (``simulate``).

Pure code: the planner, the routing and the rules are imported from
``codalab_scaler.core``, never re-implemented; the models of CodaLab's bundle
manager, of workers and of backends live here.  Only ``output`` writes files.
"""
