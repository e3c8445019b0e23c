"""The annotation stage: a local web page to draw the few boxes training needs, and to review predictions."""
