"""Task construction: MeSH grouping, prompts and the extractive teacher."""
