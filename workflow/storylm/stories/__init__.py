"""The text of stories: cleaning, the builtin generator and checker, figures of sampled stories."""
