"""autopeft's built-in plugins: each module is an ordinary pluggy plugin, like a third-party one."""
