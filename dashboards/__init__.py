"""The pipeline dashboard (`lmforge dashboard`): MLflow figures as one self-contained page."""
