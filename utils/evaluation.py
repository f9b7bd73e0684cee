"""Test-set evaluation with the real labels (never a teacher query)."""
import torch
import torch.nn.functional as F

from utils.pool import to_float


def eval_batch_size(images: torch.Tensor) -> int:
    """250 images a batch on the CPU, 1000 elsewhere (see evaluate)."""
    return 250 if images.device.type == "cpu" else 1000


@torch.no_grad()
def evaluate(model, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 0):
    """model in eval mode over uint8 images (N, C, H, W) and labels (N,), both on
    the model's device -> (mean cross-entropy, accuracy in %).

    batch_size 0: 250 on the CPU, where a LeNet's activations then stay in one
    core's cache (MNIST's test set 1.5x faster than in batches of 1000, with
    bit-identical logits: docs/PERFORMANCE.md), 1000 elsewhere."""
    batch_size = batch_size or eval_batch_size(images)
    model.eval()
    loss_sum, correct = 0.0, 0
    for x, y in zip(images.split(batch_size), labels.split(batch_size)):
        logits = model(to_float(x))
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
    n = labels.shape[0]
    return loss_sum / n, 100.0 * correct / n


@torch.no_grad()
def per_class_recall(model, images: torch.Tensor, labels: torch.Tensor, classes: int, batch_size: int = 0):
    """% of each class's images the model names correctly: (classes,) float,
    NaN for a class with no image. Shows where a student's errors sit.
    Batches as evaluate's (batch_size 0: eval_batch_size)."""
    batch_size = batch_size or eval_batch_size(images)
    model.eval()
    predicted = torch.cat([model(to_float(x)).argmax(1) for x in images.split(batch_size)])
    hits = torch.bincount(labels[predicted == labels], minlength=classes).float()
    return 100.0 * hits / torch.bincount(labels, minlength=classes).float()
