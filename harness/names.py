"""The one set of name patterns: what may name a task, a method or a variant in specs, result keys and paths
(and so in the leaderboard, which never has to escape a name)."""

NAME_PATTERN = r"^[a-z0-9][a-z0-9_]*$"
# a method variant's name carries its method's (`dino@vitb16`); a user-given name stays NAME_PATTERN
METHOD_NAME_PATTERN = r"^[a-z0-9][a-z0-9_]*(@[a-z0-9][a-z0-9_]*)?$"
# a variant's name carries its task's; --set overrides follow as +name=value
TASK_NAME_PATTERN = r"^[a-z0-9][a-z0-9_]*(@[a-z0-9][a-z0-9_]*)?(\+[a-z0-9_]+=[^+/\s|*<>`\\]+)*$"
