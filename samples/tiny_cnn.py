"""A module factory: export any torch.nn.Module without a Hugging Face checkpoint.

    kiln export samples/tiny_cnn.py:make -o out/tiny-cnn
    kiln validate out/tiny-cnn

`make()` returns (module, example_inputs, options). The example inputs name the model's
inputs and fix their shapes for tracing; axis 0 of every input is exported as the dynamic
"batch" dimension unless options["dynamic_axes"] says otherwise.
"""

from __future__ import annotations

import torch
from torch import nn


class TinyCNN(nn.Module):
    """3x32x32 images -> 10 class logits."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, kernel_size=3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 16x16
            nn.Conv2d(16, 32, kernel_size=3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 8x8
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(32 * 8 * 8, num_classes))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(pixel_values))


def make() -> tuple[nn.Module, dict[str, torch.Tensor], dict[str, list[str]]]:
    torch.manual_seed(0)  # deterministic weights: the same export every time
    model = TinyCNN().eval()
    example_inputs = {"pixel_values": torch.randn(2, 3, 32, 32)}
    return model, example_inputs, {"output_names": ["logits"]}
