"""What every method's run reports, in one schema: the TensorBoard tags of the
test curve and the keys of summary.json that the comparison runner reads."""
import torch


def log_test(writer, epoch: int, queries: int, test_loss: float, test_acc: float, split: str = "test") -> None:
    """Accuracy and loss on the evaluation split ("test", or "val": held-out
    training images) by epoch and by teacher queries spent so far."""
    writer.add_scalar(f"{split}/acc", test_acc, epoch)
    writer.add_scalar(f"{split}/loss", test_loss, epoch)
    writer.add_scalar(f"{split}_by_queries/acc", test_acc, queries)
    writer.add_scalar(f"{split}_by_queries/loss", test_loss, queries)
    writer.add_scalar("queries", queries, epoch)


def base_summary(method: str, args, state: dict, queries: int, teacher_acc: float, device) -> dict:
    """The keys every method's summary.json carries. `args` needs dataset, net,
    student_net, bb_mode, query_budget and seed; `state` best_acc, final_acc,
    epoch, samples and wall_s. Results depend on the thread count, so it is
    recorded beside the device."""
    return {
        "method": method, "dataset": args.dataset, "net": args.net, "student_net": args.student_net,
        "bb_mode": args.bb_mode, "query_budget": args.query_budget, "seed": args.seed,
        "teacher_acc": teacher_acc, "best_acc": state["best_acc"], "final_acc": state["final_acc"],
        "epochs_run": state["epoch"], "queries": queries, "samples": state["samples"],
        "wall_s": round(state["wall_s"], 1), "device": str(device), "threads": torch.get_num_threads(),
    }


def newest_per_step(scalars) -> dict:
    """{step: value} of TensorBoard scalar events. A step logged twice (the epoch
    a kill interrupted, logged again by the resume) keeps its newer value."""
    return {e.step: e.value for e in sorted(scalars, key=lambda e: e.wall_time)}


def budget_spent(query_budget: int, queries: int) -> str:
    """Whose budget ran out: the run's own --query_budget, or (no cap of its
    own, or one not yet reached) the provider's budget for the API key."""
    if query_budget and queries >= query_budget:
        return f"query budget of {query_budget:,} spent"
    return f"the teacher's provider has no budget left for this API key ({queries:,} queries by this run)"
