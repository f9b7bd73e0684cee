"""Test-set evaluation with the real labels (never a teacher query)."""
import torch
import torch.nn.functional as F

from utils.pool import to_float


def eval_batch_size(images: torch.Tensor) -> int:
    """250 images a batch on the CPU, 1000 elsewhere (see predict)."""
    return 250 if images.device.type == "cpu" else 1000


@torch.no_grad()
def predict(model, images: torch.Tensor, batch_size: int = 0) -> torch.Tensor:
    """model in eval mode over uint8 images (N, C, H, W) on its device -> logits (N, classes).

    batch_size 0: 250 on the CPU, where a LeNet's activations then stay in one
    core's cache (MNIST's test set 1.5x faster than in batches of 1000, with
    bit-identical logits: docs/PERFORMANCE.md), 1000 elsewhere."""
    batch_size = batch_size or eval_batch_size(images)
    model.eval()
    return torch.cat([model(to_float(x)) for x in images.split(batch_size)])


def evaluate(model, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 0):
    """(mean cross-entropy, accuracy in %) of the model on uint8 images and their
    labels (N,), both on the model's device; batches as predict's."""
    logits = predict(model, images, batch_size)
    loss = F.cross_entropy(logits, labels).item()
    return loss, 100.0 * (logits.argmax(1) == labels).sum().item() / labels.shape[0]


def per_class_recall(model, images: torch.Tensor, labels: torch.Tensor, classes: int, batch_size: int = 0):
    """% of each class's images the model names correctly: (classes,) float,
    NaN for a class with no image. Shows where a student's errors sit."""
    predicted = predict(model, images, batch_size).argmax(1)
    hits = torch.bincount(labels[predicted == labels], minlength=classes).float()
    return 100.0 * hits / torch.bincount(labels, minlength=classes).float()
