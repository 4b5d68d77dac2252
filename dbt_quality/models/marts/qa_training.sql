-- Question/answer pairs: question = program inputs, answer = program outputs.
select domain, example_id, messages[2].content as question, messages[3].content as answer, consensus
from {{ ref('sft_training') }}
