"""What composer knows of lorax itself: its stock template sets (check) and its log files (logs)."""
