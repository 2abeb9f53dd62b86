"""Small reusable detectors (river-style `learn_one` / `score_one`), one per module.

They hold no event time, no rows and no alert state: a monitor feeds them
readings in event-time order, turns their scores into tail probabilities
(`likelihood`) and episodes (`episode`), and emits rows and observations.
"""
