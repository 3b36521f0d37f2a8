"""Knowledge distillation: losses, the teacher cache and the trainer."""
