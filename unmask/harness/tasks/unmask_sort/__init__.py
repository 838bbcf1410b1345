"""The `unmask_sort` lm-eval task: unmask's held-out sort questions, scored as `unmask eval` scores them."""
