"""Evaluators (class-agnostic COCO AP/AR, CorLoc, ...) and the registry that picks one per split."""
from cad.evaluation.build import EVALUATOR_REGISTRY, build_evaluator
from cad.evaluation.class_agnostic import ClassAgnosticCOCOEvaluator
from cad.evaluation.corloc import CorLocEvaluator, corloc
from cad.evaluation.hungarian import HungarianVOCEvaluator
from cad.evaluation.motion import MotionEvaluator

__all__ = [
    "EVALUATOR_REGISTRY", "build_evaluator", "ClassAgnosticCOCOEvaluator", "CorLocEvaluator", "HungarianVOCEvaluator", "MotionEvaluator", "corloc",
]
