"""Contrastive Representation Distillation (Tian, Krishnan, Isola, ICLR 2020): loss and memory banks."""
from .criterion import CRDLoss, ContrastLoss, Embed, Normalize
from .memory import ContrastMemory

__all__ = ["CRDLoss", "ContrastLoss", "ContrastMemory", "Embed", "Normalize"]
