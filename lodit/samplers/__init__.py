"""Sampling flow-matching models: ODE solvers, timestep schedules, classifier-free guidance.

Convention: ``t = 1`` is noise, ``t = 0`` is data; solvers integrate from 1 to 0.
May import: torch and the top-level helpers only (solvers take any velocity function).
"""
