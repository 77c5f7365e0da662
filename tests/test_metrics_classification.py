"""Classification metrics (chapter 5): confusion matrix, accuracy, precision / recall / F1."""
import pytest
import torch

from lmlib import exercises
from lmlib.metrics import accuracy, confusion_matrix, precision_recall_f1


def test_confusion_matrix_rows_are_true_classes():
    y_true = torch.tensor([0, 0, 0, 1, 1, 2])
    y_pred = torch.tensor([0, 1, 0, 1, 0, 2])
    cm = confusion_matrix(y_true, y_pred, 3)
    assert cm.tolist() == [[2, 1, 0], [1, 1, 0], [0, 0, 1]]
    assert confusion_matrix(y_true, y_pred).shape == (3, 3)  # n_classes inferred


def test_accuracy_and_f1_by_hand():
    # 6 positives: 4 found (TP=4, FN=2); 2 false alarms among 10 negatives.
    y_true = torch.tensor([1] * 6 + [0] * 10)
    y_pred = torch.tensor([1, 1, 1, 1, 0, 0] + [1, 1] + [0] * 8)
    assert accuracy(y_true, y_pred) == pytest.approx(12 / 16)
    p, r, f1 = precision_recall_f1(y_true, y_pred)
    assert (p, r) == (pytest.approx(4 / 6), pytest.approx(4 / 6))
    assert f1 == pytest.approx(4 / 6)
    p0, r0, _ = precision_recall_f1(y_true, y_pred, positive=0)
    assert (p0, r0) == (pytest.approx(8 / 10), pytest.approx(8 / 10))


def test_f1_is_zero_without_true_positives_and_majority_guess():
    y_true = torch.tensor([0] * 9 + [1])
    always_ham = torch.zeros(10, dtype=torch.long)
    assert accuracy(y_true, always_ham) == pytest.approx(0.9)
    assert precision_recall_f1(y_true, always_ham, n_classes=2) == (0.0, 0.0, 0.0)


def test_metrics_match_random_reference():
    gen = torch.Generator().manual_seed(0)
    y_true, y_pred = torch.randint(2, (500,), generator=gen), torch.randint(2, (500,), generator=gen)
    tp = ((y_true == 1) & (y_pred == 1)).sum().item()
    fp = ((y_true == 0) & (y_pred == 1)).sum().item()
    fn = ((y_true == 1) & (y_pred == 0)).sum().item()
    p, r, f1 = precision_recall_f1(y_true, y_pred)
    assert f1 == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert f1 == pytest.approx(exercises.reference_f1_from_confusion(confusion_matrix(y_true, y_pred), 1))


@pytest.mark.parametrize("y_true, y_pred", [
    (torch.tensor([0, 1]), torch.tensor([0.2, 0.8])),  # probabilities instead of classes
    (torch.tensor([0, 1, 1]), torch.tensor([0, 1])),      # lengths differ
    (torch.tensor([[0, 1]]), torch.tensor([[0, 1]])),     # not 1-D
])
def test_bad_input_is_rejected(y_true, y_pred):
    with pytest.raises(ValueError):
        confusion_matrix(y_true, y_pred)


def test_class_out_of_range_is_rejected():
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        confusion_matrix(torch.tensor([0, 2]), torch.tensor([0, 1]), 2)
    with pytest.raises(ValueError):
        precision_recall_f1(torch.tensor([0, 1]), torch.tensor([0, 1]), positive=3)


def test_f1_checker_accepts_reference_and_rejects_wrong():
    assert exercises.check_f1_from_confusion(exercises.reference_f1_from_confusion, verbose=False)

    def transposed(cm, k):  # rows and columns swapped: precision and recall swap, F1 does not
        return exercises.reference_f1_from_confusion(cm.T, k)

    def accuracy_instead(cm, k):
        return (cm.diag().sum() / cm.sum()).item()

    def precision_only(cm, k):
        return (cm[k, k] / cm[:, k].sum()).item()

    assert exercises.check_f1_from_confusion(transposed, verbose=False)  # F1 is symmetric in P and R
    assert not exercises.check_f1_from_confusion(accuracy_instead, verbose=False)
    assert not exercises.check_f1_from_confusion(precision_only, verbose=False)
