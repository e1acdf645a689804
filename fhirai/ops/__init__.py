"""Operations: the commands that run the product."""
