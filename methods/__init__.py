"""IDEAL's steps, and its baselines', as a library with explicit arguments.

Scripts (ideal.py, dfme.py, benchmarks/) compose these pieces; nothing here
reads an argparse namespace. A synthesizer makes a batch of images with zero
teacher queries; `label_once` pays for it; `distill` trains the student on
the pool.
"""
from methods.steps import PHASES, Clock, distill, distill_relabel, frozen, label_once, sync
from methods.synthesizers import (SYNTHESIZERS, IdealSynthesizer, NoiseSynthesizer,
                                  RandomGeneratorSynthesizer)

__all__ = ["PHASES", "Clock", "distill", "distill_relabel", "frozen", "label_once", "sync",
           "SYNTHESIZERS", "IdealSynthesizer", "NoiseSynthesizer", "RandomGeneratorSynthesizer"]
