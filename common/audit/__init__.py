"""Privacy audits of privmed's training (``privmed-audit``): attacks that must fail under DP.

- :mod:`common.audit.gradient_inversion`: Geiping et al. (2020) inversion of one site's update.
- :mod:`common.audit.one_run_bound`: Steinke, Nasr & Jagielski (2023) ε lower bound from one run.
"""
