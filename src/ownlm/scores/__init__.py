"""How answers compare to golds: LaMP's metrics (`metrics`) and the trivial references a
personalized model must beat (`references`). Pure functions over strings, shared by
evaluation and by the stages' validation."""
