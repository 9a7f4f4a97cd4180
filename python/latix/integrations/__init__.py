"""Adapters to other frameworks, each an optional extra:

* :mod:`latix.integrations.langchain`: a LangChain retriever (``pip install 'latix[langchain]'``).
* :mod:`latix.integrations.llama_index`: a LlamaIndex retriever
  (``pip install 'latix[llama-index]'``).
"""
