"""`audit build`: compile the server into one executable with Nuitka, following build/recipe.toml."""
